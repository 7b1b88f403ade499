"""Where `sdk` sends data: the settings `sdk.init` records and the URI they form.

The settings live in one private object guarded by a lock; everything else
asks `tracking_uri()` and `project()` rather than reading it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

LOCAL_SCHEME = "trackio"
SERVER_SCHEMES = ("trackio+http", "trackio+https")
# An MLflow tracking server, which may itself store into Trackio.
_MLFLOW_SERVER_PREFIXES = ("http://", "https://")
ALL_SCHEMES = (LOCAL_SCHEME, *SERVER_SCHEMES)


@dataclass
class _Settings:
    project: str | None = None
    directory: Path | None = None
    server_url: str | None = None


_settings = _Settings()
_settings_lock = threading.Lock()


def init(
    project: str | None = None,
    *,
    dir: str | os.PathLike[str] | None = None,  # noqa: A002 - Vertex's name
    server_url: str | None = None,
) -> None:
    """
    Set the defaults that later `sdk` calls use.

    Args:
        project: The Trackio project (the MLflow experiment) that `sdk.autolog`,
            `sdk.start_run` and `sdk.get_experiment_df` use when given none.
        dir: A local Trackio directory to write to instead of `TRACKIO_DIR`
            (or Trackio's default directory when that is unset).
        server_url: A running Trackio server (``http://host:port`` or
            ``https://host``) to log to instead of a local directory.

    Raises:
        MlflowException: If both `dir` and `server_url` are given, or the
            server URL is not an ``http`` or ``https`` URL.

    .. versionadded:: 0.1.0
    """
    if dir is not None and server_url is not None:
        raise MlflowException(
            "sdk.init() got both dir and server_url. Pass a local directory or "
            "a Trackio server, not both.",
            error_code=INVALID_PARAMETER_VALUE,
        )
    if server_url is not None and not server_url.startswith(("http://", "https://")):
        raise MlflowException(
            f"sdk.init(server_url={server_url!r}) is not an http(s) URL. Pass "
            "the server's address, for example 'http://127.0.0.1:7860'.",
            error_code=INVALID_PARAMETER_VALUE,
        )
    with _settings_lock:
        if project is not None:
            _settings.project = project
        if dir is not None:
            _settings.directory = Path(dir).expanduser().resolve()
            _settings.server_url = None
        if server_url is not None:
            _settings.server_url = server_url.rstrip("/")
            _settings.directory = None


def reset() -> None:
    """Forget everything `init` recorded (used by tests)."""
    with _settings_lock:
        _settings.project = None
        _settings.directory = None
        _settings.server_url = None


def project() -> str | None:
    """Return the project `init` recorded, or None."""
    return _settings.project


def directory() -> Path | None:
    """Return the local Trackio directory `init` recorded, or None."""
    return _settings.directory


def has_destination() -> bool:
    """Return whether `init` recorded a directory or a server to log to."""
    with _settings_lock:
        return _settings.directory is not None or _settings.server_url is not None


def tracking_uri_for(user_uri: str | None) -> str:
    """Return where to track, given the tracking URI the user chose, if any.

    A job that sets only ``MLFLOW_TRACKING_URI=http://host:port`` logs through
    that MLflow server; a directory or server given to `init` still wins.
    """
    if not has_destination() and (user_uri or "").startswith(_MLFLOW_SERVER_PREFIXES):
        return user_uri
    return tracking_uri()


def tracking_uri() -> str:
    """Return the MLflow tracking URI for the configured destination."""
    with _settings_lock:
        if _settings.server_url is not None:
            return "trackio+" + _settings.server_url
        if _settings.directory is not None:
            return f"{LOCAL_SCHEME}://{_settings.directory.as_posix()}"
        return f"{LOCAL_SCHEME}://"
