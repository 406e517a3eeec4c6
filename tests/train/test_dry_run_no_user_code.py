"""``nova train --dry-run`` runs no user code: a GRPO reward file is read and parsed, never imported."""

from __future__ import annotations

from pathlib import Path

import yaml

from nova.config import load_yaml_config
from nova.train.dryrun import dry_run


def _config(tmp_path: Path, model: Path, reward: Path, function: str) -> Path:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n' * 8)
    text = {"name": "g", "model": {"base": str(model), "quantization": "none"}, "method": "grpo",
            "data": {"datasets": [{"path": str(data)}]},
            "grpo": {"num_generations": 2, "rewards": [{"file": str(reward), "function": function}]},
            "training": {"micro_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 1},
            "output_dir": str(tmp_path / "run"), "logs_dir": str(tmp_path / "logs")}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def test_a_dry_run_never_imports_the_reward_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    proof = tmp_path / "ran"
    reward = tmp_path / "reward.py"
    reward.write_text(f"from pathlib import Path\nPath({str(proof)!r}).write_text('imported')\n\n"
                      "def score(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    out = dry_run(load_yaml_config(_config(tmp_path, tiny_model_dir, reward, "score")), preflight=False)
    assert not proof.exists()  # the module-level code did not run
    assert not [m for m in out.missing if "reward" in m], out.missing


def test_a_dry_run_still_names_a_missing_function_or_a_syntax_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    reward = tmp_path / "reward.py"
    reward.write_text("import os\n\ndef other(prompts, completions, **kw):\n    return []\n")
    out = dry_run(load_yaml_config(_config(tmp_path, tiny_model_dir, reward, "score")), preflight=False)
    assert any("has no function 'score'" in m and "functions in it: other" in m for m in out.missing), out.missing
    reward.write_text("def score(:\n")
    out = dry_run(load_yaml_config(_config(tmp_path, tiny_model_dir, reward, "score")), preflight=False)
    assert any("is not valid Python (line 1)" in m for m in out.missing), out.missing
