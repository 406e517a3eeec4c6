"""Config: YAML files validated once into a frozen, typed schema."""

from nova.config.load import load_phase, load_pipeline, load_yaml_config
from nova.config.schema import PhaseConfig, PipelineConfig

__all__ = ["PhaseConfig", "PipelineConfig", "load_phase", "load_pipeline", "load_yaml_config"]
