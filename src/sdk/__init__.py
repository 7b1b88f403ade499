"""
Send every MLflow-aware framework's params, metrics and tags to Trackio.

``import sdk; sdk.autolog()`` is the whole set-up: MLflow's autologging then
writes into the local Trackio directory, where ``trackio show`` displays it.
"""

from sdk._autolog import autolog, is_autolog_enabled
from sdk._config import init
from sdk._manual import (
    end_run,
    get_experiment_df,
    log_metrics,
    log_params,
    show,
    start_run,
)
from sdk._store import TrackioStore

__version__ = "0.1.0"

__all__ = [
    "TrackioStore",
    "__version__",
    "autolog",
    "end_run",
    "get_experiment_df",
    "init",
    "is_autolog_enabled",
    "log_metrics",
    "log_params",
    "show",
    "start_run",
]
