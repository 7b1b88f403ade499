"""Contract tests of TrackioStore against real MLflow and real Trackio files."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import (
    ExperimentTag,
    LifecycleStage,
    Metric,
    Param,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking.abstract_store import AbstractStore

from sdk import TrackioStore
from sdk._mlflow_compat import (
    HAS_LOGGED_MODELS,
    LoggedModelStatus,
    MlflowNotImplementedException,
)
from tests.trackio_reader import TrackioReader

NO_LOGGED_MODELS = pytest.mark.skipif(
    not HAS_LOGGED_MODELS, reason="MLflow 2 has no logged models"
)

# Store methods MLflow's client, fluent API, autolog and server call; each
# must be TrackioStore's own, not AbstractStore's silent default.
REQUIRED_METHODS = [
    "search_experiments",
    "create_experiment",
    "get_experiment",
    "get_experiment_by_name",
    "delete_experiment",
    "restore_experiment",
    "rename_experiment",
    "set_experiment_tag",
    "delete_experiment_tag",
    "get_run",
    "update_run_info",
    "create_run",
    "delete_run",
    "restore_run",
    "get_metric_history",
    "_search_runs",
    "log_batch",
    "log_inputs",
    "delete_tag",
    "record_logged_model",
    "search_traces",
    *(
        pytest.param(name, marks=NO_LOGGED_MODELS)
        for name in (
            "log_outputs",
            "create_logged_model",
            "get_logged_model",
            "finalize_logged_model",
            "set_logged_model_tags",
            "delete_logged_model_tag",
            "delete_logged_model",
            "log_logged_model_params",
            "search_logged_models",
        )
    ),
]


def _make_run(store: TrackioStore, experiment: str = "exp", **kwargs):
    found = store.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else store.create_experiment(experiment)
    )
    return store.create_run(
        experiment_id, "tester", kwargs.pop("start_time", 1000), [], None
    )


class TestContract:
    @pytest.mark.parametrize("name", REQUIRED_METHODS)
    def test_method_is_implemented_by_the_store(self, name: str) -> None:
        """Every method MLflow calls is the store's own implementation."""
        ours = getattr(TrackioStore, name)
        inherited = getattr(AbstractStore, name, None)
        assert ours is not inherited

    def test_init_calls_super(self, store: TrackioStore) -> None:
        """The store has MLflow's async logging queue, so end_run can shut it down."""
        assert store._async_logging_queue is not None
        store.shut_down_async_logging()

    def test_trace_writes_raise_not_implemented(self, store: TrackioStore) -> None:
        """Traces are refused with a sentence, never dropped silently."""
        with pytest.raises(MlflowNotImplementedException, match="does not store"):
            store.start_trace(None)
        assert store.search_traces(["0"]) == ([], None)


class TestUris:
    def test_absolute_path_uri_writes_there(self, tmp_path: Path) -> None:
        """trackio:///abs/path keeps the project file in that directory."""
        elsewhere = tmp_path / "elsewhere"
        store = TrackioStore(f"trackio://{elsewhere.as_posix()}")
        store.create_experiment("proj")
        assert (elsewhere / "proj.db").exists()

    def test_plain_uri_uses_trackio_dir(self, store, trackio_dir: Path) -> None:
        """trackio:// resolves to TRACKIO_DIR."""
        assert TrackioStore("trackio://").backend.directory == trackio_dir.resolve()

    @pytest.mark.parametrize("uri", ["trackio://project", "trackio:///x?y=1"])
    def test_unknown_uri_forms_are_rejected(self, uri: str) -> None:
        """A URI with a host or query names nothing this store understands."""
        with pytest.raises(MlflowException, match="is not a Trackio tracking URI"):
            TrackioStore(uri)


class TestExperiments:
    def test_default_experiment_exists_without_a_file(self, store, trackio_dir) -> None:
        """Experiment 0 is readable before anything is written, and leaves no file."""
        assert store.get_experiment("0").name == "Default"
        assert [e.name for e in store.search_experiments()] == ["Default"]
        assert list(trackio_dir.glob("*.db")) == []

    def test_create_get_and_tags(self, store: TrackioStore) -> None:
        """A created experiment reads back by id and name with its tags."""
        experiment_id = store.create_experiment("proj", tags=[ExperimentTag("a", "1")])
        store.set_experiment_tag(experiment_id, ExperimentTag("b", "2"))
        experiment = store.get_experiment_by_name("proj")
        assert experiment.experiment_id == experiment_id
        assert experiment.tags == {"a": "1", "b": "2"}
        assert experiment.artifact_location.startswith("file://")
        store.delete_experiment_tag(experiment_id, "a")
        assert store.get_experiment(experiment_id).tags == {"b": "2"}

    def test_duplicate_name_is_resource_already_exists(self, store) -> None:
        """Creating a name twice fails as MLflow's SQL store does."""
        store.create_experiment("proj")
        with pytest.raises(MlflowException, match="already exists") as info:
            store.create_experiment("proj")
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"

    def test_create_racing_another_process(
        self, store, trackio_dir, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A name another process created after the check is RESOURCE_ALREADY_EXISTS.

        Two server workers may both find the name free; the second insert
        must fail as MLflow's stores do, so `set_experiment` can recover.
        """
        other = TrackioStore(f"trackio://{trackio_dir.as_posix()}")
        monkeypatch.setattr(other, "_check_name_is_free", lambda *args: None)
        store.create_experiment("proj")
        with pytest.raises(MlflowException, match="already exists") as info:
            other.create_experiment("proj")
        other.backend.close()
        assert info.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert sorted(e.name for e in store.search_experiments()) == ["Default", "proj"]

    def test_names_trackio_would_merge_get_a_clear_error(self, store) -> None:
        """Names equal after Trackio drops characters are refused, not merged."""
        store.create_experiment("exp.v2")
        with pytest.raises(MlflowException, match="would be stored as Trackio") as info:
            store.create_experiment("expv2")
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"

    @pytest.mark.parametrize(
        ("name", "message"),
        [("", "Invalid experiment name"), ("registry-x", "reserved")],
    )
    def test_invalid_names(self, store, name: str, message: str) -> None:
        """Invalid experiment names raise INVALID_PARAMETER_VALUE."""
        with pytest.raises(MlflowException, match=message) as info:
            store.create_experiment(name)
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"

    def test_punctuation_only_names_stay_apart(self, store) -> None:
        """Names with no letter or digit are stored distinctly."""
        first, second = store.create_experiment("!!!"), store.create_experiment("???")
        assert first != second
        assert store.get_experiment(first).name == "!!!"

    def test_missing_experiment(self, store: TrackioStore) -> None:
        """Unknown ids raise RESOURCE_DOES_NOT_EXIST; unknown names give None."""
        with pytest.raises(MlflowException, match="No Experiment with id=42") as info:
            store.get_experiment("42")
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert store.get_experiment_by_name("nope") is None

    def test_delete_restore_and_rename(self, store: TrackioStore) -> None:
        """Lifecycle and renames follow MLflow, and deleting hides the runs."""
        experiment_id = store.create_experiment("proj")
        run = store.create_run(experiment_id, "u", 1, [], "r")
        store.delete_experiment(experiment_id)
        assert store.get_experiment(experiment_id).lifecycle_stage == "deleted"
        assert store.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
        assert store.search_experiments(ViewType.DELETED_ONLY)[0].name == "proj"
        store.restore_experiment(experiment_id)
        assert store.get_run(run.info.run_id).info.lifecycle_stage == "active"
        store.rename_experiment(experiment_id, "renamed")
        assert store.get_experiment_by_name("renamed").experiment_id == experiment_id
        assert store.get_experiment_by_name("proj") is None

    def test_search_filter_order_and_pages(self, store: TrackioStore) -> None:
        """search_experiments filters, orders and pages with MLflow's utilities."""
        for name in ["b", "a", "c"]:
            store.create_experiment(name)
        names = [e.name for e in store.search_experiments(order_by=["name ASC"])]
        assert names == ["Default", "a", "b", "c"]
        page = store.search_experiments(max_results=2, order_by=["name DESC"])
        assert [e.name for e in page] == ["c", "b"]
        rest = store.search_experiments(
            max_results=2, order_by=["name DESC"], page_token=page.token
        )
        assert [e.name for e in rest] == ["a", "Default"]
        filtered = store.search_experiments(filter_string="name LIKE 'a%'")
        assert [e.name for e in filtered] == ["a"]


class TestRuns:
    def test_create_and_get(self, store: TrackioStore) -> None:
        """A new run is RUNNING, named, and has a file:// artifact URI."""
        run = _make_run(store)
        fetched = store.get_run(run.info.run_id)
        assert fetched.info.status == "RUNNING"
        assert fetched.info.run_name == fetched.data.tags["mlflow.runName"]
        assert fetched.info.artifact_uri.startswith("file://")
        assert fetched.info.artifact_uri.endswith(f"{run.info.run_id}/artifacts")

    def test_conflicting_run_name_and_tag(self, store: TrackioStore) -> None:
        """run_name and the mlflow.runName tag must agree."""
        with pytest.raises(MlflowException, match="different values"):
            store.create_run("0", "u", 1, [RunTag("mlflow.runName", "a")], "b")

    def test_missing_run(self, store: TrackioStore) -> None:
        """An unknown run id raises RESOURCE_DOES_NOT_EXIST."""
        with pytest.raises(MlflowException, match="not found") as info:
            store.get_run("0" * 32)
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    def test_update_status_end_time_and_name(self, store, trackio_dir) -> None:
        """update_run_info changes status and name, in MLflow and in Trackio."""
        run = _make_run(store)
        info = store.update_run_info(
            run.info.run_id, RunStatus.FINISHED, 5000, "renamed"
        )
        assert (info.status, info.end_time, info.run_name) == (
            "FINISHED",
            5000,
            "renamed",
        )
        assert store.get_run(run.info.run_id).data.tags["mlflow.runName"] == "renamed"
        reader = TrackioReader(trackio_dir)
        assert [r["name"] for r in reader.run_records("exp")] == ["renamed"]

    def test_deleted_run_rejects_writes(self, store: TrackioStore) -> None:
        """Writes to a deleted run fail; restoring makes it writable again."""
        run_id = _make_run(store).info.run_id
        store.delete_run(run_id)
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            store.log_batch(run_id, [], [Param("a", "1")], [])
        store.restore_run(run_id)
        store.log_batch(run_id, [], [Param("a", "1")], [])
        assert store.get_run(run_id).data.params == {"a": "1"}

    def test_nested_runs_stay_separate(self, store, trackio_dir) -> None:
        """A child run is its own run, grouped under its parent's name in Trackio."""
        parent = store.create_run("0", "u", 1, [], "parent")
        child = store.create_run(
            "0", "u", 2, [RunTag("mlflow.parentRunId", parent.info.run_id)], "child"
        )
        assert child.info.run_id != parent.info.run_id
        configs = TrackioReader(trackio_dir).run_configs("Default")
        assert configs[child.info.run_id]["_Group"] == "parent"
        assert "_Group" not in configs[parent.info.run_id]


class TestParamsAndTags:
    def test_params_are_immutable(self, store: TrackioStore) -> None:
        """Re-logging the same value is fine; another value is an error."""
        run_id = _make_run(store).info.run_id
        store.log_batch(run_id, [], [Param("lr", "0.1")], [])
        store.log_batch(run_id, [], [Param("lr", "0.1")], [])
        with pytest.raises(MlflowException, match="Changing param values") as info:
            store.log_batch(run_id, [], [Param("lr", "0.2")], [])
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"
        assert store.get_run(run_id).data.params == {"lr": "0.1"}

    def test_params_after_metrics_reach_trackio_config(self, store, trackio_dir):
        """Params logged after the first metric still land in Trackio's config."""
        run_id = _make_run(store).info.run_id
        store.log_batch(run_id, [Metric("loss", 1.0, 10, 0)], [], [])
        store.log_batch(run_id, [], [Param("late", "yes")], [])
        assert TrackioReader(trackio_dir).run_configs("exp")[run_id]["late"] == "yes"

    def test_set_and_delete_tags(self, store: TrackioStore) -> None:
        """Tags overwrite; deleting a missing tag is RESOURCE_DOES_NOT_EXIST."""
        run_id = _make_run(store).info.run_id
        store.set_tag(run_id, RunTag("k", "1"))
        store.set_tag(run_id, RunTag("k", "2"))
        assert store.get_run(run_id).data.tags["k"] == "2"
        store.delete_tag(run_id, "k")
        assert "k" not in store.get_run(run_id).data.tags
        with pytest.raises(MlflowException, match="No tag with name: k") as info:
            store.delete_tag(run_id, "k")
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    def test_run_name_tag_renames(self, store: TrackioStore) -> None:
        """Setting mlflow.runName renames the run, as in MLflow."""
        run_id = _make_run(store).info.run_id
        store.set_tag(run_id, RunTag("mlflow.runName", "new-name"))
        assert store.get_run(run_id).info.run_name == "new-name"


class TestMetrics:
    def test_history_keeps_steps_timestamps_and_order(self, store) -> None:
        """Every point comes back with its own step and timestamp."""
        run_id = _make_run(store).info.run_id
        points = [Metric("loss", 1.0 / (i + 1), 100 + i, i) for i in range(5)]
        store.log_batch(run_id, points + [Metric("acc", 0.5, 100, 0)], [], [])
        history = store.get_metric_history(run_id, "loss")
        assert isinstance(history, PagedList)
        assert [(m.step, m.timestamp, m.value) for m in history] == [
            (m.step, m.timestamp, m.value) for m in points
        ]

    def test_history_pages(self, store: TrackioStore) -> None:
        """max_results and page_token walk the history in order."""
        run_id = _make_run(store).info.run_id
        store.log_batch(run_id, [Metric("x", i, i, i) for i in range(7)], [], [])
        first = store.get_metric_history(run_id, "x", max_results=5)
        second = store.get_metric_history(run_id, "x", 5, first.token)
        assert [m.step for m in first] + [m.step for m in second] == list(range(7))
        assert second.token is None

    def test_history_read_again_shows_every_later_write(
        self, store: TrackioStore, trackio_dir: Path
    ) -> None:
        """A history read twice shows what this or another connection wrote since."""
        run_id = _make_run(store).info.run_id
        store.log_batch(run_id, [Metric("x", 1.0, 1, 0)], [], [])
        assert [m.value for m in store.get_metric_history(run_id, "x")] == [1.0]

        store.log_batch(run_id, [Metric("x", 2.0, 2, 1)], [], [])
        assert [m.value for m in store.get_metric_history(run_id, "x")] == [1.0, 2.0]

        other = TrackioStore(f"trackio://{trackio_dir.as_posix()}")
        other.log_batch(run_id, [Metric("x", 3.0, 3, 2)], [], [])
        other.backend.close()
        history = store.get_metric_history(run_id, "x")
        assert [m.value for m in history] == [1.0, 2.0, 3.0]

    def test_latest_metric_rule(self, store: TrackioStore) -> None:
        """The summary keeps the point with the greatest (step, timestamp, value)."""
        run_id = _make_run(store).info.run_id
        store.log_batch(
            run_id, [Metric("m", 5.0, 10, 3), Metric("m", 9.0, 20, 1)], [], []
        )
        assert store.get_run(run_id).data.metrics["m"] == 5.0

    def test_nan_and_infinite_values(self, store: TrackioStore) -> None:
        """NaN reads back as NaN and infinities as MLflow's SQL store gives them."""
        run_id = _make_run(store).info.run_id
        values = [math.nan, math.inf, -math.inf]
        store.log_batch(
            run_id, [Metric("v", value, 1, i) for i, value in enumerate(values)], [], []
        )
        history = [m.value for m in store.get_metric_history(run_id, "v")]
        assert math.isnan(history[0])
        assert history[1:] == [sys.float_info.max, -sys.float_info.max]

    def test_reserved_and_system_keys_round_trip(self, store, trackio_dir) -> None:
        """Keys Trackio reserves and system/ keys read back unchanged."""
        run_id = _make_run(store).info.run_id
        batch = [Metric("step", 3.0, 1, 0), Metric("system/cpu", 50.0, 1, 2)]
        store.log_batch(run_id, batch, [], [])
        assert store.get_run(run_id).data.metrics == {"step": 3.0, "system/cpu": 50.0}
        assert [m.step for m in store.get_metric_history(run_id, "system/cpu")] == [2]
        assert TrackioReader(trackio_dir).system_logs("exp", run_id)[0]["cpu"] == 50.0

    @NO_LOGGED_MODELS
    def test_identical_point_with_model_id_is_kept_once(self, store) -> None:
        """Model.log re-logs metrics with a model id; the history does not double."""
        run_id = _make_run(store).info.run_id
        store.log_batch(run_id, [Metric("m", 1.0, 5, 0)], [], [])
        store.log_batch(run_id, [Metric("m", 1.0, 5, 0, model_id="m-1")], [], [])
        assert len(store.get_metric_history(run_id, "m")) == 1

    @pytest.mark.parametrize(
        ("metric", "message"),
        [
            (Metric("ok", "abc", 1, 0), "Please specify value as a valid double"),
            (Metric("a" * 251, 1.0, 1, 0), "exceeds the maximum length"),
        ],
    )
    def test_invalid_metrics_are_rejected(self, store, metric, message) -> None:
        """Bad metric values and keys raise INVALID_PARAMETER_VALUE."""
        run_id = _make_run(store).info.run_id
        with pytest.raises(MlflowException, match=message) as info:
            store.log_batch(run_id, [metric], [], [])
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


class TestSearchRuns:
    def test_filter_order_and_pages(self, store: TrackioStore) -> None:
        """search_runs filters on metrics, params and tags and pages in order."""
        experiment_id = store.create_experiment("proj")
        for i in range(5):
            run_id = store.create_run(experiment_id, "u", i, [], f"r{i}").info.run_id
            store.log_batch(
                run_id,
                [Metric("loss", 1.0 / (i + 1), 1, 0)],
                [Param("i", str(i))],
                [RunTag("even", str(i % 2 == 0))],
            )
        runs, _ = store._search_runs(
            [experiment_id],
            "metrics.loss < 0.3",
            ViewType.ACTIVE_ONLY,
            10,
            ["metrics.loss ASC"],
            None,
        )
        assert [r.info.run_name for r in runs] == ["r4", "r3"]
        runs, _ = store._search_runs(
            [experiment_id],
            "params.i = '2' and tags.even = 'True'",
            ViewType.ACTIVE_ONLY,
            10,
            None,
            None,
        )
        assert [r.info.run_name for r in runs] == ["r2"]
        first, token = store._search_runs(
            [experiment_id],
            "",
            ViewType.ACTIVE_ONLY,
            3,
            ["attributes.start_time"],
            None,
        )
        rest, end = store._search_runs(
            [experiment_id],
            "",
            ViewType.ACTIVE_ONLY,
            3,
            ["attributes.start_time"],
            token,
        )
        assert [r.info.run_name for r in first + rest] == [f"r{i}" for i in range(5)]
        assert end is None

    def test_deleted_runs_follow_view_type(self, store: TrackioStore) -> None:
        """Deleted runs are hidden from ACTIVE_ONLY and shown by DELETED_ONLY."""
        run_id = _make_run(store).info.run_id
        experiment_id = store.get_experiment_by_name("exp").experiment_id
        store.delete_run(run_id)
        active, _ = store._search_runs(
            [experiment_id], "", ViewType.ACTIVE_ONLY, 10, None, None
        )
        deleted, _ = store._search_runs(
            [experiment_id], "", ViewType.DELETED_ONLY, 10, None, None
        )
        assert (len(active), [r.info.run_id for r in deleted]) == (0, [run_id])


class TestTrackioInterop:
    def test_trackio_reads_what_mlflow_wrote(self, client, trackio_dir) -> None:
        """Trackio's reader sees the run, its params and every metric point."""
        mlflow.set_experiment("interop")
        with mlflow.start_run(run_name="only-params") as params_only:
            mlflow.log_params({"a": 1})
        with mlflow.start_run(run_name="with-metrics") as with_metrics:
            for step in range(3):
                mlflow.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        reader = TrackioReader(trackio_dir)
        names = [r["name"] for r in reader.run_records("interop")]
        assert names == ["only-params", "with-metrics"]
        assert reader.run_configs("interop")[params_only.info.run_id]["a"] == "1"
        values = reader.metric_values("interop", with_metrics.info.run_id, "loss")
        assert [(v["step"], v["value"]) for v in values] == [
            (0, 1.0),
            (1, 0.5),
            (2, 1.0 / 3),
        ]

    def test_mlflow_reads_what_trackio_wrote(self, client, trackio_dir) -> None:
        """A run logged with trackio.init/log reads back through MlflowClient."""
        script = textwrap.dedent(
            """
            import trackio
            trackio.init(project="native", name="t-run", config={"lr": 0.1},
                         auto_log_cpu=False, auto_log_gpu=False)
            for step in range(4):
                trackio.log({"loss": 1.0 / (step + 1)}, step=step)
            trackio.finish()
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        experiment = client.get_experiment_by_name("native")
        [run] = client.search_runs([experiment.experiment_id])
        assert (run.info.run_name, run.data.params) == ("t-run", {"lr": "0.1"})
        assert run.data.metrics == {"loss": 0.25}
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2, 3]
        client.set_tag(run.info.run_id, "reviewed", "yes")
        assert client.get_run(run.info.run_id).data.params == {"lr": "0.1"}
        assert client.get_run(run.info.run_id).data.tags["reviewed"] == "yes"


@NO_LOGGED_MODELS
class TestLoggedModels:
    def test_lifecycle(self, store: TrackioStore) -> None:
        """A model is created PENDING, gets tags, params and metrics, then READY."""
        run_id = _make_run(store).info.run_id
        experiment_id = store.get_experiment_by_name("exp").experiment_id
        model = store.create_logged_model(experiment_id, "net", run_id)
        assert model.status == LoggedModelStatus.PENDING
        assert model.artifact_location.startswith("file://")
        store.set_logged_model_tags(model.model_id, [_model_tag("t", "1")])
        store.log_logged_model_params(model.model_id, [_model_param("p", "2")])
        store.log_batch(
            run_id, [Metric("m", 1.0, 1, 0, model_id=model.model_id)], [], []
        )
        store.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        fetched = store.get_logged_model(model.model_id)
        assert fetched.status == LoggedModelStatus.READY
        assert (fetched.tags, fetched.params) == ({"t": "1"}, {"p": "2"})
        assert [m.key for m in fetched.metrics] == ["m"]
        found = store.search_logged_models([experiment_id])
        assert [m.model_id for m in found] == [model.model_id]
        store.delete_logged_model_tag(model.model_id, "t")
        assert store.get_logged_model(model.model_id).tags == {}
        store.delete_logged_model(model.model_id)
        with pytest.raises(MlflowException, match="not found"):
            store.get_logged_model(model.model_id)


def _model_tag(key: str, value: str):
    from mlflow.entities import LoggedModelTag

    return LoggedModelTag(key, value)


def _model_param(key: str, value: str):
    from mlflow.entities import LoggedModelParameter

    return LoggedModelParameter(key, value)


class TestConcurrencyAndDurability:
    def test_runs_logged_at_once_from_threads(self, store: TrackioStore) -> None:
        """Eight threads logging eight runs keep every point."""
        run_ids = [_make_run(store).info.run_id for _ in range(8)]
        errors: list[BaseException] = []

        def log(run_id: str) -> None:
            try:
                for step in range(50):
                    store.log_batch(run_id, [Metric("x", step, step, step)], [], [])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=log, args=(r,)) for r in run_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for run_id in run_ids:
            assert len(store.get_metric_history(run_id, "x")) == 50

    def test_returned_write_survives_sigkill(self, trackio_dir: Path) -> None:
        """A process killed right after log_metric returns keeps that point."""
        script = textwrap.dedent(
            """
            import os, signal, mlflow
            mlflow.set_tracking_uri("trackio://")
            run = mlflow.start_run(run_name="killed")
            print(run.info.run_id, flush=True)
            mlflow.log_metric("loss", 0.5, step=7)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True
        )
        assert done.returncode == -9
        run_id = done.stdout.split()[0]
        store = TrackioStore("trackio://")
        [point] = store.get_metric_history(run_id, "loss")
        assert (point.step, point.value) == (7, 0.5)
        assert store.get_run(run_id).info.status == "RUNNING"
        store.update_run_info(run_id, RunStatus.KILLED, 1, None)
        assert store.get_run(run_id).info.status == "KILLED"
        assert store.get_run(run_id).info.lifecycle_stage == LifecycleStage.ACTIVE
