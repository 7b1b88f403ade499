"""
Switch MLflow autologging to Trackio and back: `autolog` and `is_autolog_enabled`.

Enabling records what the user had, points MLflow at the configured Trackio URI
and turns on ``mlflow.autolog()``; disabling puts back exactly what was recorded.

Tracking URI: MLflow keeps it in two places, the module variable that
``mlflow.set_tracking_uri`` writes and the ``MLFLOW_TRACKING_URI`` environment
variable (which ``set_tracking_uri`` also writes, for subprocesses). "Unset" means
both are empty; ``mlflow.get_tracking_uri()`` cannot tell, since it returns the
resolved default. Both are recorded and written back as they were, so a URI that
was never set is not set after disabling. An ``http(s)://`` URI the user set is
an MLflow server (in the central-server topology, one over Trackio) and is kept
unless `sdk.init` chose a destination.

Experiment: the active experiment id and the ``MLFLOW_EXPERIMENT_ID`` and
``MLFLOW_EXPERIMENT_NAME`` variables are recorded and written back. An experiment
id belongs to one store, so when enabling moves to another store and no project
is given, the id (and the ``MLFLOW_EXPERIMENT_ID`` that ``set_experiment``
exports) is cleared for the session; a name means the same project in Trackio,
so ``MLFLOW_EXPERIMENT_NAME`` stays.

Frameworks: ``mlflow.autolog()`` leaves alone any framework the user configured
with its own ``mlflow.<flavor>.autolog()`` call, and so does its ``disable=True``.
Disabling still re-applies each such setting that differs from what was recorded,
then writes the recorded configuration back; frameworks configured only by this
session stay disabled.

Log filter: one filter instance, on each handler of the ``mlflow`` logger (the
logger does not propagate, and a filter on the logger itself would miss records
from its children). Rules, first match wins:

1. ERROR and above: kept.
2. Warnings a user must act on: kept (the framework version is outside the range
   autolog supports, an unexpected error during autologging, an exception while
   enabling autologging, a failure to log or send, an experiment that cannot be
   retrieved by name).
3. Routine noise: dropped (autologging enabled, autolog run created, experiment
   created, MLflow's deprecation lines and warnings re-logged from frameworks,
   pickle and local-version-label advice about models it saves itself).
4. Anything else: kept. An unknown line may be the one that explains lost data,
   and MLflow's handler also serves SQLAlchemy's and Alembic's loggers, so
   dropping by default would hide what nobody has reviewed.

A record whose message cannot be formatted is kept, for logging to report.

The store builders stay registered after disabling: they answer only ``trackio``
URIs, which nothing else claims, and a client built for such a URI keeps working.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdk import _config

if TYPE_CHECKING:
    from mlflow.store.tracking.abstract_store import AbstractStore

# MLflow is imported inside the functions: MLflow loads the package's entry point
# while it is itself being imported, and the package imports this module.

_logger = logging.getLogger(__name__)

_MLFLOW_LOGGER = "mlflow"
_URI_VARIABLE = "MLFLOW_TRACKING_URI"
_EXPERIMENT_ID_VARIABLE = "MLFLOW_EXPERIMENT_ID"
_RECORDED_VARIABLES = (_URI_VARIABLE, _EXPERIMENT_ID_VARIABLE, "MLFLOW_EXPERIMENT_NAME")

# Vertex AI's lean defaults: params and metrics, no model files.
_DEFAULTS: Mapping[str, bool] = {
    "log_input_examples": False,
    "log_model_signatures": False,
    "log_models": False,
    "silent": False,
}

_MUST_SEE = re.compile(
    "|".join(
        (
            r"autologging is known to be compatible with",
            r"Encountered unexpected error during .*autologging",
            r"Exception raised while enabling autologging",
            r"Failed to (?:log|send)",
            r"Cannot retrieve experiment by name",
            # Ours, rerouted by autolog: what a Trackio server cannot keep.
            r"The Trackio server at",
        )
    ),
    re.DOTALL,
)
_NOISE = re.compile(
    "|".join(
        (
            r"Autologging successfully enabled for",
            r"Created MLflow autologging run with ID",
            r"Experiment with name .* does not exist\. Creating a new experiment",
            r"`artifact_path` is deprecated",
            r"pickle or cloudpickle format requires exercising caution",
            r"contains a local version label",
            r"MLflow autologging encountered a warning",
            r"\b[Dd]eprecated\b|DeprecationWarning|FutureWarning",
        )
    ),
    re.DOTALL,
)


class _LogFilter(logging.Filter):
    """Keep what a user must see from MLflow's handler and drop autolog's chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True

        try:
            message = record.getMessage()
        except Exception:
            return True

        if _MUST_SEE.search(message):
            return True

        return _NOISE.search(message) is None


@dataclass
class _Before:
    """What enabling changes, as it was before the first enable."""

    tracking_uri: str | None
    environ: dict[str, str | None]
    experiment_id: str | None
    logger_level: int
    handlers: list[logging.Handler]
    integrations: dict[str, dict[str, Any]]


@dataclass
class _State:
    enabled: bool = False
    before: _Before | None = None
    log_filter: _LogFilter = field(default_factory=_LogFilter)


_state = _State()
_state_lock = threading.RLock()


def autolog(
    disable: bool = False,
    *,
    project: str | None = None,
    **mlflow_autolog_kwargs: Any,
) -> None:
    """
    Send MLflow autologging to Trackio, or turn that off again.

    Enabling registers `TrackioStore` for the ``trackio`` URI schemes, filters
    MLflow's log noise, sets the tracking URI to the one `sdk.init` configured
    (default ``trackio://``; an ``http(s)://`` MLflow server the user set is
    kept when `sdk.init` chose no destination), selects the project as the
    MLflow experiment and calls ``mlflow.autolog()`` with
    ``log_input_examples=False, log_model_signatures=False, log_models=False,
    silent=False`` unless the caller passes other values. Calling it again
    keeps what was recorded the first time and applies the new arguments.

    Disabling turns MLflow autologging off and restores the tracking URI, the
    active experiment, the ``mlflow`` logger's level and handlers, and the
    autolog settings of frameworks the user configured before enabling. It does
    nothing when autologging through `sdk` is not enabled.

    Args:
        disable: Turn autologging through `sdk` off instead of on.
        project: The Trackio project (MLflow experiment) to log to. Defaults to
            the project given to `sdk.init`, else MLflow's usual choice (the
            ``MLFLOW_EXPERIMENT_NAME`` variable or the default experiment).
            Ignored when `disable` is true.
        **mlflow_autolog_kwargs: Passed on to ``mlflow.autolog()``, overriding
            the defaults above. Ignored when `disable` is true.

    Raises:
        TypeError: If a keyword is not a parameter of ``mlflow.autolog()`` in the
            installed MLflow.
        MlflowException: If `project` is empty or cannot be selected in the
            Trackio store. A failed first enable leaves everything as it was.

    .. versionadded:: 0.1.0
    """
    with _state_lock:
        if disable:
            _disable()
        else:
            _enable(project, mlflow_autolog_kwargs)


def is_autolog_enabled() -> bool:
    """
    Report whether autologging through `sdk` is on.

    Returns:
        True between an enabling and a disabling `autolog` call, else False.

    .. versionadded:: 0.1.0
    """
    with _state_lock:
        return _state.enabled


def _enable(project: str | None, overrides: dict[str, Any]) -> None:
    arguments = _autolog_arguments(overrides)
    _check_project(project)
    first = not _state.enabled
    if first:
        _state.before = _record()

    try:
        _switch_on(project, arguments)
    except BaseException:
        # A second enable keeps its recorded state, so disable still restores.
        if first and _state.before is not None:
            _restore(_state.before)
            _state.before = None
        raise

    _state.enabled = True
    _logger.debug("autolog enabled with %s", arguments)


def _disable() -> None:
    if not _state.enabled or _state.before is None:
        return

    before = _state.before
    _state.enabled = False
    _state.before = None
    _restore(before)
    _logger.debug("autolog disabled")


def _autolog_arguments(overrides: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    # MLflow 2.x lacks some of 3.x's parameters (log_traces, exclude_flavors).
    accepted = inspect.signature(mlflow.autolog).parameters
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise TypeError(
            f"mlflow.autolog() in MLflow {mlflow.__version__} has no parameter "
            f"{', '.join(unknown)}. Remove it from the sdk.autolog() call."
        )

    arguments = {key: value for key, value in _DEFAULTS.items() if key in accepted}
    arguments.update(overrides)
    return arguments


def _check_project(project: str | None) -> None:
    if project is None or project.strip():
        return

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise MlflowException(
        f"sdk.autolog(project={project!r}) got an empty project name. Pass the "
        "Trackio project to log to, or None for the default one.",
        error_code=INVALID_PARAMETER_VALUE,
    )


def _record() -> _Before:
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    logger = logging.getLogger(_MLFLOW_LOGGER)
    return _Before(
        tracking_uri=utils._tracking_uri,
        environ={name: os.environ.get(name) for name in _RECORDED_VARIABLES},
        experiment_id=fluent._active_experiment_id,
        logger_level=logger.level,
        handlers=list(logger.handlers),
        # MLflow replaces a flavor's config dict on each autolog call but marks
        # it in place as "globally configured", so each dict is copied. The
        # values stay the user's own objects (callables, tag dicts).
        integrations={
            name: dict(config) for name, config in AUTOLOGGING_INTEGRATIONS.items()
        },
    )


def _destination(before: _Before | None) -> str:
    """Return the URI to track to: the configured Trackio URI or an MLflow server."""
    user_uri = None
    if before is not None:
        user_uri = before.tracking_uri or before.environ.get(_URI_VARIABLE)
    return _config.tracking_uri_for(user_uri)


def _switch_on(project: str | None, arguments: dict[str, Any]) -> None:
    import mlflow

    uri = _destination(_state.before)
    register_store()
    _install_filter()
    if mlflow.get_tracking_uri() != uri:
        _forget_experiment_id()
    mlflow.set_tracking_uri(uri)

    name = project if project is not None else _config.project()
    if name is not None:
        _select_experiment(name)

    rank = _distributed_rank()
    if rank:
        # Distributed launchers (torchrun, Lightning's DDP) run the script once
        # per process; only rank 0 may autolog, or each rank opens a run.
        _logger.info("sdk.autolog: rank %s of a distributed job logs nothing", rank)
        return
    mlflow.autolog(**arguments)


def _select_experiment(name: str) -> None:
    import mlflow
    from mlflow.tracking import fluent

    experiment = mlflow.set_experiment(name)
    # When another process creates the experiment between MLflow's lookup and
    # its create (jobs starting at once against one server), set_experiment
    # returns the experiment without selecting it, and runs go to Default.
    if fluent._active_experiment_id != experiment.experiment_id:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)


def _distributed_rank() -> int:
    """Return this process's rank in a distributed job (0 when not in one)."""
    for variable in ("RANK", "NODE_RANK", "LOCAL_RANK"):
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def register_store() -> None:
    from mlflow.tracking._tracking_service import utils

    registry = utils._tracking_store_registry
    for scheme in _config.ALL_SCHEMES:
        registry.register(scheme, _build_store)

    # MLflow caches one store per URI; an older one would outlive a new config.
    registry._get_store_with_resolved_uri.cache_clear()


def _build_store(store_uri: str, artifact_uri: str | None = None) -> AbstractStore:
    # Imported here so that Trackio loads only when MLflow first needs a store.
    from sdk._store import TrackioStore

    return TrackioStore(store_uri=store_uri, artifact_uri=artifact_uri)


def _install_filter() -> None:
    for handler in logging.getLogger(_MLFLOW_LOGGER).handlers:
        if not any(known is _state.log_filter for known in handler.filters):
            handler.addFilter(_state.log_filter)


def _forget_experiment_id() -> None:
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    os.environ.pop(_EXPERIMENT_ID_VARIABLE, None)


def _restore(before: _Before) -> None:
    try:
        _restore_autologging(before.integrations)
    finally:
        _restore_tracking(before)
        _restore_logger(before)


def _restore_autologging(recorded: dict[str, dict[str, Any]]) -> None:
    import mlflow
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    mlflow.autolog(disable=True)

    # The user's own mlflow.autolog() goes first, so that framework-specific
    # settings override it, as they do in MLflow.
    for name in sorted(recorded, key=lambda name: name != "mlflow"):
        config = recorded[name]
        enabled = not config.get("disable", True)
        if enabled and AUTOLOGGING_INTEGRATIONS.get(name) != config:
            _reapply(name, config)

    for name, config in recorded.items():
        AUTOLOGGING_INTEGRATIONS[name] = dict(config)


def _reapply(name: str, config: dict[str, Any]) -> None:
    try:
        function = _autolog_function(name)
        accepted = inspect.signature(function).parameters
        function(**{key: value for key, value in config.items() if key in accepted})
    except Exception as error:
        _logger.warning(
            "sdk.autolog(disable=True) could not restore the %s autolog settings: %s",
            name,
            error,
        )


def _autolog_function(name: str) -> Callable[..., Any]:
    import mlflow

    if name == "mlflow":
        return mlflow.autolog

    # Every MLflow integration is named after its module (for example "pytorch"
    # for Lightning, "pyspark.ml"), which is how MLflow itself finds them.
    function: Callable[..., Any] = importlib.import_module(f"mlflow.{name}").autolog
    return function


def _restore_tracking(before: _Before) -> None:
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils

    if utils._tracking_uri != before.tracking_uri:
        # Assigned rather than passed to set_tracking_uri, where None is not an
        # unset in every MLflow line.
        utils._tracking_uri = before.tracking_uri
        _reset_tracer_provider()

    fluent._active_experiment_id = before.experiment_id
    for name, value in before.environ.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _reset_tracer_provider() -> None:
    # set_tracking_uri does this too: the tracer keeps the URI it exports to.
    try:
        from mlflow.tracing.provider import reset
    except ImportError:
        return

    reset()


def _restore_logger(before: _Before) -> None:
    logger = logging.getLogger(_MLFLOW_LOGGER)
    for handler in [*logger.handlers, *before.handlers]:
        handler.removeFilter(_state.log_filter)

    logger.handlers = list(before.handlers)
    logger.setLevel(before.logger_level)
