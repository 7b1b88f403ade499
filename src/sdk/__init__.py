"""Send every MLflow-aware framework's params, metrics and tags to Trackio."""

from sdk._config import init
from sdk._store import TrackioStore

__version__ = "0.1.0"

__all__ = ["TrackioStore", "__version__", "init"]
