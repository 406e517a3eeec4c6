"""Watching a run: alerts, early stopping and plots while it trains; ``nova status`` and ``nova plot`` after.

The callback needs transformers, the status reader must not (it answers from a second tmux
pane in well under a second), so names are imported on first use rather than here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nova.monitor.callback import MonitorCallback
    from nova.monitor.plot import plot_run
    from nova.monitor.status import read_status

__all__ = ["MonitorCallback", "plot_run", "read_status"]

_WHERE = {"MonitorCallback": "nova.monitor.callback", "plot_run": "nova.monitor.plot",
          "read_status": "nova.monitor.status"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'nova.monitor' has no attribute {name!r}")
