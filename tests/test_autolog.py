"""Tests for `sdk.autolog`: what it switches on, and that disabling restores it all."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import pytest
import sklearn  # noqa: F401 - imported so that mlflow.autolog() configures it
from mlflow.exceptions import MlflowException
from mlflow.tracking import fluent
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils.autologging_utils import (
    AUTOLOGGING_INTEGRATIONS,
    autologging_is_disabled,
    get_autolog_function,
    get_autologging_config,
)

from sdk import _config
from sdk._autolog import _build_store, _LogFilter, autolog, is_autolog_enabled

_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
_COMPATIBILITY_WARNING = (
    "MLflow sklearn autologging is known to be compatible with 1.4.0 <= "
    "scikit-learn, but the installed version is 0.1.0."
)


def _forget_mlflow_state() -> None:
    mlflow.autolog(disable=True)
    for name in list(AUTOLOGGING_INTEGRATIONS):
        if name != "mlflow" and not autologging_is_disabled(name):
            get_autolog_function(name)(disable=True)
        AUTOLOGGING_INTEGRATIONS[name] = {}
    tracking_utils._tracking_uri = None
    fluent._active_experiment_id = None
    tracking_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()


@pytest.fixture(autouse=True)
def _clean_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("MLFLOW_AUTOLOGGING_TESTING", "true")
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    _config.reset()
    _forget_mlflow_state()
    yield
    autolog(disable=True)
    _config.reset()
    _forget_mlflow_state()
    # monkeypatch only restores variables that existed; MLflow exports new ones.
    for name in _VARIABLES:
        os.environ.pop(name, None)


def _sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"


def _sdk_filters() -> list[int]:
    return [
        sum(isinstance(known, _LogFilter) for known in handler.filters)
        for handler in logging.getLogger("mlflow").handlers
    ]


class TestTrackingUri:
    def test_unset_uri_stays_unset(self) -> None:
        """A tracking URI the user never set is not set after disabling."""
        autolog()
        autolog(disable=True)

        assert "MLFLOW_TRACKING_URI" not in os.environ
        assert not tracking_utils.is_tracking_uri_set()

    def test_uri_from_set_tracking_uri_comes_back(self, tmp_path: Path) -> None:
        """A URI set with mlflow.set_tracking_uri is the URI after disabling."""
        uri = _sqlite_uri(tmp_path)
        mlflow.set_tracking_uri(uri)

        autolog()
        autolog(disable=True)

        assert tracking_utils._tracking_uri == uri
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        assert mlflow.get_tracking_uri() == uri

    def test_uri_from_environment_comes_back(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A URI set only in MLFLOW_TRACKING_URI comes back only there."""
        uri = (tmp_path / "mlruns").as_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

        autolog()
        autolog(disable=True)

        assert tracking_utils._tracking_uri is None
        assert os.environ["MLFLOW_TRACKING_URI"] == uri

    def test_enabled_uses_trackio_uri(self) -> None:
        """While enabled MLflow tracks to trackio:// and the flag says so."""
        autolog()

        assert mlflow.get_tracking_uri() == "trackio://"
        assert is_autolog_enabled()

        autolog(disable=True)

        assert not is_autolog_enabled()

    def test_enabled_uses_configured_directory(self, tmp_path: Path) -> None:
        """While enabled MLflow tracks to the directory given to sdk.init."""
        _config.init(dir=tmp_path / "runs")

        autolog()

        expected = f"trackio://{(tmp_path / 'runs').resolve().as_posix()}"
        assert mlflow.get_tracking_uri() == expected

    @pytest.mark.parametrize("set_by", ["environment", "set_tracking_uri"])
    def test_mlflow_server_uri_is_kept(
        self, set_by: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An http(s) MLflow server the user set is where autolog logs to.

        In the central-server topology that server writes to Trackio itself.
        """
        uri = "http://tracking.example:5000"
        if set_by == "environment":
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        else:
            mlflow.set_tracking_uri(uri)

        autolog()

        assert mlflow.get_tracking_uri() == uri

        autolog(disable=True)

        assert mlflow.get_tracking_uri() == uri

    def test_configured_destination_beats_server_uri(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A directory given to sdk.init wins over MLFLOW_TRACKING_URI."""
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://tracking.example")
        _config.init(dir=tmp_path / "runs")

        autolog()

        assert mlflow.get_tracking_uri().startswith("trackio://")

    def test_every_scheme_is_registered(self) -> None:
        """Enabling registers the store builder for every Trackio scheme."""
        autolog()

        registry = tracking_utils._tracking_store_registry
        for scheme in _config.ALL_SCHEMES:
            assert registry.get_store_builder(f"{scheme}://host") is _build_store

    def test_builder_makes_trackio_store(self) -> None:
        """The store MLflow builds for trackio:// while enabled is a TrackioStore."""
        from sdk._store import TrackioStore

        autolog()

        assert isinstance(tracking_utils._get_store(), TrackioStore)


class TestExperiment:
    def test_active_experiment_comes_back(self, tmp_path: Path) -> None:
        """The experiment the user had selected is active again after disabling."""
        mlflow.set_tracking_uri(_sqlite_uri(tmp_path))
        experiment_id = mlflow.set_experiment("mine").experiment_id

        autolog()

        assert fluent._active_experiment_id is None
        assert "MLFLOW_EXPERIMENT_ID" not in os.environ

        autolog(disable=True)

        assert fluent._active_experiment_id == experiment_id
        assert os.environ["MLFLOW_EXPERIMENT_ID"] == experiment_id

    def test_experiment_name_variable_is_kept(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """MLFLOW_EXPERIMENT_NAME names a project in Trackio too, so it stays."""
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "named")

        autolog()

        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "named"

        autolog(disable=True)

        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "named"
        assert "MLFLOW_EXPERIMENT_ID" not in os.environ

    def test_project_selects_experiment(self) -> None:
        """project="demo" makes "demo" the active MLflow experiment."""
        autolog(project="demo")

        experiment = mlflow.get_experiment_by_name("demo")
        assert experiment is not None
        assert fluent._active_experiment_id == experiment.experiment_id

    def test_init_project_selects_experiment(self) -> None:
        """Without a project argument the project given to sdk.init is used."""
        _config.init(project="from-init")

        autolog()

        experiment = mlflow.get_experiment_by_name("from-init")
        assert experiment is not None
        assert fluent._active_experiment_id == experiment.experiment_id

    def test_project_created_by_another_process(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A project created by another job mid-way is still the one selected.

        MLflow's set_experiment returns without selecting the experiment when
        its create loses that race, as with jobs starting at once.
        """
        from sdk._store import TrackioStore

        original = TrackioStore.get_experiment_by_name
        calls = []

        def missing_first(store: TrackioStore, name: str) -> Any:
            calls.append(name)
            if len(calls) == 1:
                # Another process creates it right after this lookup.
                store.create_experiment(name)
                return None
            return original(store, name)

        monkeypatch.setattr(TrackioStore, "get_experiment_by_name", missing_first)

        autolog(project="raced")

        monkeypatch.undo()
        experiment = mlflow.get_experiment_by_name("raced")
        assert fluent._active_experiment_id == experiment.experiment_id

    def test_empty_project_raises(self) -> None:
        """An empty project name is refused before anything changes."""
        with pytest.raises(MlflowException, match="empty project name"):
            autolog(project=" ")

        assert not is_autolog_enabled()
        assert not tracking_utils.is_tracking_uri_set()


class TestFrameworkSettings:
    def test_user_framework_settings_survive(self) -> None:
        """A framework the user configured keeps its settings after disabling."""
        mlflow.sklearn.autolog(log_models=True, max_tuning_runs=3)
        configured = dict(AUTOLOGGING_INTEGRATIONS["sklearn"])

        autolog()
        autolog(disable=True)

        assert get_autologging_config("sklearn", "max_tuning_runs") == 3
        assert not autologging_is_disabled("sklearn")
        assert AUTOLOGGING_INTEGRATIONS["sklearn"] == configured

    def test_user_global_autolog_survives(self) -> None:
        """The user's own mlflow.autolog() settings come back after disabling."""
        mlflow.autolog(log_models=True, exclusive=True)

        autolog()

        assert get_autologging_config("sklearn", "exclusive") is False

        autolog(disable=True)

        assert get_autologging_config("mlflow", "exclusive") is True
        assert get_autologging_config("sklearn", "exclusive") is True
        assert not autologging_is_disabled("sklearn")

    def test_unconfigured_frameworks_end_disabled(self) -> None:
        """A framework only this session configured is disabled afterwards."""
        autolog()

        assert not autologging_is_disabled("sklearn")

        autolog(disable=True)

        assert autologging_is_disabled("sklearn")
        assert AUTOLOGGING_INTEGRATIONS["mlflow"] == {}

    def test_lean_defaults(self) -> None:
        """While enabled, models, signatures and input examples are not logged."""
        autolog()

        for key in ("log_models", "log_model_signatures", "log_input_examples"):
            assert get_autologging_config("sklearn", key) is False

    def test_caller_keyword_overrides_default(self) -> None:
        """A keyword the caller passes wins over the SDK's default."""
        autolog(log_models=True)

        assert get_autologging_config("sklearn", "log_models") is True

    def test_unknown_keyword_raises(self) -> None:
        """A keyword mlflow.autolog() lacks is refused before anything changes."""
        with pytest.raises(TypeError, match="has no parameter not_a_parameter"):
            autolog(not_a_parameter=True)

        assert not is_autolog_enabled()
        assert AUTOLOGGING_INTEGRATIONS["mlflow"] == {}

    def test_failed_enable_restores_everything(self, tmp_path: Path) -> None:
        """When mlflow.autolog() fails, the user's state is left as it was."""
        uri = _sqlite_uri(tmp_path)
        mlflow.set_tracking_uri(uri)
        handlers = list(logging.getLogger("mlflow").handlers)

        with pytest.raises(TypeError, match="not iterable"):
            autolog(exclude_flavors=5)

        assert not is_autolog_enabled()
        assert tracking_utils._tracking_uri == uri
        assert AUTOLOGGING_INTEGRATIONS["mlflow"] == {}
        assert logging.getLogger("mlflow").handlers == handlers
        assert _sdk_filters() == [0] * len(handlers)


def _record(level: int, msg: Any, *args: Any) -> logging.LogRecord:
    return logging.makeLogRecord(
        {
            "name": "mlflow.utils.autologging_utils",
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": msg,
            "args": args,
        }
    )


_KEPT = [
    pytest.param(logging.WARNING, _COMPATIBILITY_WARNING, (), id="compatibility"),
    pytest.param(
        logging.WARNING,
        "Encountered unexpected error during %s autologging: %s",
        ("sklearn", "boom"),
        id="unexpected-error",
    ),
    pytest.param(
        logging.WARNING,
        "Encountered unexpected error during autologging: boom",
        (),
        id="unexpected-error-no-flavor",
    ),
    pytest.param(
        logging.WARNING,
        "Exception raised while enabling autologging for sklearn: boom",
        (),
        id="enable-exception",
    ),
    pytest.param(
        logging.WARNING,
        "Failed to send trace to MLflow backend: boom",
        (),
        id="failed-send",
    ),
    pytest.param(
        logging.WARNING, "Cannot retrieve experiment by name demo", (), id="no-exp"
    ),
    pytest.param(
        logging.ERROR, "Failed to log feature importance plot.", (), id="error"
    ),
    pytest.param(
        logging.ERROR,
        "Autologging successfully enabled for sklearn.",
        (),
        id="error-noise",
    ),
    pytest.param(logging.INFO, "Some line nobody reviewed", (), id="unlisted-info"),
    pytest.param(logging.WARNING, "Some warning nobody reviewed", (), id="unlisted"),
]
_DROPPED = [
    pytest.param(
        logging.INFO, "Autologging successfully enabled for %s.", ("sklearn",), id="on"
    ),
    pytest.param(
        logging.INFO,
        "Created MLflow autologging run with ID '%s', which will track "
        "hyperparameters, performance metrics, model artifacts, and lineage "
        "information for the current %s workflow",
        ("abc", "sklearn"),
        id="run-created",
    ),
    pytest.param(
        logging.INFO,
        "Experiment with name '%s' does not exist. Creating a new experiment.",
        ("demo",),
        id="experiment-created",
    ),
    pytest.param(
        logging.WARNING,
        "`artifact_path` is deprecated. Please use `name` instead.",
        (),
        id="artifact-path",
    ),
    pytest.param(
        logging.WARNING,
        "Saving scikit-learn models in the pickle or cloudpickle format requires "
        "exercising caution because these formats rely on Python's object "
        "serialization mechanism.",
        (),
        id="pickle",
    ),
    pytest.param(
        logging.WARNING,
        "Found torch version (2.13.0+cpu) contains a local version label (+cpu).",
        (),
        id="local-version",
    ),
    pytest.param(
        logging.WARNING,
        'MLflow autologging encountered a warning: "x.py:1: FutureWarning: y"',
        (),
        id="rerouted-warning",
    ),
]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


class TestLogFilter:
    @pytest.mark.parametrize(("level", "msg", "args"), _KEPT)
    def test_keeps_what_users_must_see(
        self, level: int, msg: str, args: tuple[Any, ...]
    ) -> None:
        """Errors, actionable warnings and unlisted lines pass the filter."""
        assert _LogFilter().filter(_record(level, msg, *args))

    @pytest.mark.parametrize(("level", "msg", "args"), _DROPPED)
    def test_drops_routine_noise(
        self, level: int, msg: str, args: tuple[Any, ...]
    ) -> None:
        """Autolog's routine lines do not pass the filter."""
        assert not _LogFilter().filter(_record(level, msg, *args))

    @pytest.mark.parametrize(
        "msg",
        [Exception("boom"), {"key": "value"}, _Unprintable(), None],
        ids=["exception", "dict", "unprintable", "none"],
    )
    def test_non_str_message_never_raises(self, msg: object) -> None:
        """A record whose msg is not a string is judged without raising."""
        assert _LogFilter().filter(_record(logging.WARNING, msg)) is True

    def test_bad_format_arguments_never_raise(self) -> None:
        """A record whose arguments do not fit its format string is kept."""
        assert _LogFilter().filter(_record(logging.WARNING, "%s and %s", "one"))

    def test_mlflow_handler_output_is_filtered(self) -> None:
        """MLflow's own handler prints the warning but not enabling's noise."""
        handler = logging.getLogger("mlflow").handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        captured = io.StringIO()
        previous = handler.setStream(captured)
        try:
            autolog(project="end-to-end")
            logging.getLogger("mlflow.tracking.fluent").info(
                "Autologging successfully enabled for %s.", "xgboost"
            )
            logging.getLogger("mlflow.utils.autologging_utils").warning(
                _COMPATIBILITY_WARNING
            )
        finally:
            handler.setStream(previous)

        output = captured.getvalue()
        assert "successfully enabled" not in output
        assert "Creating a new experiment" not in output
        assert _COMPATIBILITY_WARNING in output

    def test_two_enables_add_one_filter(self) -> None:
        """Enabling twice leaves exactly one SDK filter on each MLflow handler."""
        handlers = list(logging.getLogger("mlflow").handlers)

        autolog()
        autolog()

        assert _sdk_filters() == [1] * len(handlers)

        autolog(disable=True)

        assert _sdk_filters() == [0] * len(handlers)

    def test_logger_level_and_handlers_come_back(self) -> None:
        """The mlflow logger's level and handler list are restored on disable."""
        logger = logging.getLogger("mlflow")
        level = logger.level
        handlers = list(logger.handlers)
        logger.setLevel(logging.WARNING)
        try:
            autolog()
            logger.addHandler(logging.NullHandler())
            logger.setLevel(logging.DEBUG)
            autolog(disable=True)

            assert logger.level == logging.WARNING
            assert logger.handlers == handlers
        finally:
            logger.setLevel(level)
            logger.handlers = handlers


class TestIdempotence:
    def test_disable_without_enable_is_noop(self, tmp_path: Path) -> None:
        """Disabling when not enabled changes nothing and raises nothing."""
        uri = _sqlite_uri(tmp_path)
        mlflow.set_tracking_uri(uri)
        mlflow.sklearn.autolog(max_tuning_runs=2)
        integrations = {k: dict(v) for k, v in AUTOLOGGING_INTEGRATIONS.items()}

        autolog(disable=True)
        autolog(disable=True)

        assert not is_autolog_enabled()
        assert tracking_utils._tracking_uri == uri
        assert integrations == AUTOLOGGING_INTEGRATIONS
        assert _sdk_filters() == [0] * len(logging.getLogger("mlflow").handlers)

    def test_second_enable_keeps_recorded_state(self, tmp_path: Path) -> None:
        """A second enable does not record the SDK's own URI as the user's."""
        uri = _sqlite_uri(tmp_path)
        mlflow.set_tracking_uri(uri)

        autolog()
        autolog(log_models=True)

        assert get_autologging_config("sklearn", "log_models") is True

        autolog(disable=True)

        assert tracking_utils._tracking_uri == uri
        assert not is_autolog_enabled()

    def test_second_enable_applies_new_directory(self, tmp_path: Path) -> None:
        """Enabling again after sdk.init(dir=...) switches to that directory."""
        autolog()
        _config.init(dir=tmp_path / "other")
        autolog()

        assert mlflow.get_tracking_uri().endswith((tmp_path / "other").as_posix())

        autolog(disable=True)

        assert not tracking_utils.is_tracking_uri_set()

    def test_concurrent_enable_disable_stays_consistent(self) -> None:
        """Eight threads switching on and off end disabled with no stray filter."""
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def switch() -> None:
            try:
                barrier.wait()
                for _ in range(3):
                    autolog()
                    assert max(_sdk_filters()) <= 1
                    autolog(disable=True)
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [threading.Thread(target=switch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert not is_autolog_enabled()
        assert _sdk_filters() == [0] * len(logging.getLogger("mlflow").handlers)
        assert not tracking_utils.is_tracking_uri_set()
