"""One workload, two stores: TrackioStore must answer as MLflow's sqlite store.

Each test runs the same workload against ``sqlite:///<tmp>/sqlite/mlflow.db``
and ``trackio:///<tmp>/trackio`` through one client path (the fluent API,
``MlflowClient``, async logging) and compares every read-back and every
error after normalising what legitimately differs (tests/differential.py,
docs/conformance.md).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    rule,
    run_state_machine_as_test,
)
from mlflow.entities import ExperimentTag, Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList
from mlflow.tracking._tracking_service import utils as tracking_utils
from trackio.utils import canonical_project_name

from sdk._mlflow_compat import MLFLOW_MAJOR
from tests.differential import (
    RUN_TIMES,
    SQLITE,
    STORE_TIMES,
    TRACKIO,
    Normaliser,
    Places,
    Recorder,
    artifact_roots,
    assert_same,
    build_sqlite_template,
    close_store,
    sqlite_store,
    trackio_store,
)

Workload = Callable[[mlflow.MlflowClient, Recorder], None]

# MLflow 2's sqlite store pages no metric history (it refuses any page token)
# and fails on search_runs(max_results=None) with a TypeError; MLflow 3's
# pages both. TrackioStore pages both on either line, so on MLflow 2 the
# workloads leave those calls out rather than compare with a refusal.
PAGES_EVERYTHING = MLFLOW_MAJOR >= 3

# Observations on which MLflow 2's sqlite store is wrong by its own search
# rules (MLflow 2's SearchUtils, which TrackioStore applies on that line):
# a full last page still carries a token to an empty page, a NaN latest
# metric compares as 0 in filters, and a dataset filter with an order_by
# fails inside SQLAlchemy 2. MLflow 3's sqlite store fixed all three.
MLFLOW2_SQLITE_FAULTS = ("runs pages of", "metrics.loss < 0.5", "datasets.name")


def assert_agree(sqlite: Recorder, trackio: Recorder) -> None:
    """Assert the stores agree, on MLflow 2 except where its sqlite store errs."""
    if MLFLOW_MAJOR >= 3:
        assert_same(sqlite, trackio)
        return
    names = [
        name
        for name in sqlite.outcomes
        if not any(fault in name for fault in MLFLOW2_SQLITE_FAULTS)
    ]
    assert names == [
        name
        for name in trackio.outcomes
        if not any(fault in name for fault in MLFLOW2_SQLITE_FAULTS)
    ], "different workloads"
    assert_same(sqlite, trackio, names)


RUN_FILTERS = [
    "",
    "metrics.loss < 0.5",
    "metrics.loss >= 0.25 and params.lr = '0.1'",
    "metrics.loss = 0.5",
    "metrics.acc > 0",
    "metrics.odd > 0",
    "metrics.odd != 1",
    "params.lr != '0.1'",
    "params.optimizer LIKE 'ad%'",
    "params.optimizer ILIKE 'AD%'",
    "params.lr IS NULL",
    "params.lr IS NOT NULL",
    "tags.team = 'vision'",
    "tags.team != 'vision'",
    "tags.`mlflow.runName` LIKE 'r%'",
    "tags.missing = 'x'",
    "attributes.status = 'FINISHED'",
    "attributes.status != 'RUNNING'",
    "attributes.run_name = 'r1'",
    "attributes.run_name LIKE '%quote%'",
    "attributes.start_time > 1500",
    "attributes.start_time <= 3000",
    "attributes.end_time > 0",
    "attributes.created >= 2000",
    "attributes.user_id = 'tester'",
    "attributes.lifecycle_stage = 'active'",
    "datasets.name = 'train'",
    "metrics.loss << 1",
    "nothing.loss = 1",
    "attributes.nope = 1",
    "params.lr < 1",
]

RUN_ORDERS: list[list[str] | None] = [
    None,
    ["metrics.loss ASC"],
    ["metrics.loss DESC"],
    ["metrics.odd"],
    ["params.lr"],
    ["params.lr DESC", "metrics.loss"],
    ["tags.team DESC", "attributes.start_time ASC"],
    ["attributes.run_name"],
    ["attributes.start_time DESC"],
    ["attributes.end_time"],
    ["attributes.status"],
    ["attributes.created ASC"],
    ["metrics.missing"],
    ["nothing.loss"],
]

EXPERIMENT_FILTERS = [
    "",
    "name = 'alpha'",
    "name != 'beta'",
    "name LIKE 'a%'",
    "name ILIKE '%A%'",
    "tags.team = 'vision'",
    "tags.team != 'vision'",
    "tags.missing = 'x'",
    "creation_time > 0",
    "last_update_time > 0",
    "attributes.name = 'gamma'",
    "nope = 1",
]

EXPERIMENT_ORDERS: list[list[str] | None] = [
    None,
    ["name"],
    ["name DESC"],
    ["creation_time ASC"],
    ["creation_time DESC"],
    ["last_update_time DESC"],
    ["tags.team"],
]

VIEW_TYPES = [ViewType.ACTIVE_ONLY, ViewType.DELETED_ONLY, ViewType.ALL]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow sqlite database that each test copies."""
    return build_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture
def places(
    tmp_path: Path, trackio_dir: Path, sqlite_template: Path, monkeypatch
) -> Places:
    """A fresh sqlite database and Trackio directory; the cwd is the sqlite one."""
    places = Places(tmp_path)
    places.prepare(sqlite_template)
    # MLflow puts the sqlite store's artifacts under ./mlruns.
    monkeypatch.chdir(places.sqlite_dir)
    return places


def _tick() -> None:
    # Store-stamped times order experiments and fluent runs; apart by a few
    # milliseconds they order the same in both stores.
    time.sleep(0.003)


def run_both(
    places: Places, workload: Workload, masked: frozenset[str] = STORE_TIMES
) -> tuple[Recorder, Recorder]:
    """Run `workload` against each store in turn and return both recordings."""
    recorders = []
    for kind in (SQLITE, TRACKIO):
        tracking_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        mlflow.set_tracking_uri(places.uri(kind))
        roots = artifact_roots(places, kind, cwd=places.sqlite_dir)
        recorder = Recorder(Normaliser(roots, masked))
        workload(mlflow.MlflowClient(), recorder)
        while mlflow.active_run() is not None:
            mlflow.end_run()
        recorders.append(recorder)
    return recorders[0], recorders[1]


def _searches(client: mlflow.MlflowClient, rec: Recorder, ids: list[str]) -> None:
    for view in VIEW_TYPES:
        for text in RUN_FILTERS:
            rec.observe(
                f"runs view={view} filter={text!r}",
                lambda t=text, v=view: client.search_runs(ids, t, v),
            )
    for order in RUN_ORDERS:
        rec.observe(
            f"runs order={order}",
            lambda o=order: client.search_runs(ids, "", ViewType.ALL, order_by=o),
        )
    _walk_run_pages(client, rec, ids)


def _walk_run_pages(client: mlflow.MlflowClient, rec: Recorder, ids: list[str]):
    for size in (1, 2, 3):
        token, page = None, 0
        while True:
            found = rec.observe(
                f"runs pages of {size}, page {page}",
                lambda t=token, s=size: client.search_runs(
                    ids, "", ViewType.ALL, s, ["metrics.loss DESC"], t
                ),
            )
            if found is None or found.token is None or page > 10:
                break
            token, page = found.token, page + 1


def _experiment_searches(client: mlflow.MlflowClient, rec: Recorder) -> None:
    for view in VIEW_TYPES:
        for text in EXPERIMENT_FILTERS:
            for order in EXPERIMENT_ORDERS:
                rec.observe(
                    f"experiments view={view} filter={text!r} order={order}",
                    lambda v=view, t=text, o=order: client.search_experiments(
                        v, filter_string=t, order_by=o
                    ),
                )
    for size in (1, 2):
        token, page = None, 0
        while True:
            found = rec.observe(
                f"experiments pages of {size}, page {page}",
                lambda t=token, s=size: client.search_experiments(
                    ViewType.ALL, s, order_by=["name"], page_token=t
                ),
            )
            if found is None or found.token is None or page > 10:
                break
            token, page = found.token, page + 1
    for size in (0, -1, 50001):
        rec.observe(
            f"experiments max_results={size}",
            lambda s=size: client.search_experiments(max_results=s),
        )


def _histories(client, rec: Recorder, run_ids: list[str], keys: list[str]):
    store = client._tracking_client.store
    for index, run_id in enumerate(run_ids):
        for key in keys:
            rec.observe(
                f"history r{index} {key}", lambda r=run_id, k=key: _full(store, r, k)
            )
            token, page = None, 0
            while PAGES_EVERYTHING:
                found = rec.observe(
                    f"history r{index} {key} pages of 2, page {page}",
                    lambda r=run_id, k=key, t=token: store.get_metric_history(
                        r, k, max_results=2, page_token=t
                    ),
                )
                if found is None or found.token is None or page > 10:
                    break
                token, page = found.token, page + 1
            rec.observe(
                f"client history r{index} {key}",
                lambda r=run_id, k=key: client.get_metric_history(r, k),
            )


def _full(store: Any, run_id: str, key: str) -> Any:
    return store.get_metric_history(run_id, key)


def client_workload(client: mlflow.MlflowClient, rec: Recorder) -> None:
    """Experiments, runs, every kind of data, lifecycle, searches and errors."""
    ids = {}
    for name, tags in [("alpha", {"team": "vision"}), ("beta", {}), ("gamma", {})]:
        ids[name] = rec.observe(
            f"create {name}",
            lambda n=name, t=tags: client.create_experiment(n, tags=t),
            new="exp",
        )
        _tick()
    alpha, beta, gamma = ids["alpha"], ids["beta"], ids["gamma"]
    rec.observe("create alpha again", lambda: client.create_experiment("alpha"))
    rec.observe("by name alpha", lambda: client.get_experiment_by_name("alpha"))
    rec.observe("by name missing", lambda: client.get_experiment_by_name("nope"))
    rec.observe("by name Default", lambda: client.get_experiment_by_name("Default"))
    rec.observe("get missing experiment", lambda: client.get_experiment("424242"))
    rec.observe("get default", lambda: client.get_experiment("0"))
    rec.observe("set tag", lambda: client.set_experiment_tag(beta, "team", "nlp"))
    _tick()
    rec.observe(
        "delete missing exp tag", lambda: client.delete_experiment_tag(beta, "x")
    )
    rec.observe("create default again", lambda: client.create_experiment("Default"))

    runs = []
    plans = [
        (alpha, 1000, "r0", []),
        (alpha, 2000, "r1", []),
        (alpha, 3000, "child with 'quote'", "parent"),
        (beta, 4000, "r3", []),
    ]
    for index, (experiment_id, start, name, parent) in enumerate(plans):
        tags = {"mlflow.parentRunId": runs[0].info.run_id} if parent else None
        run = rec.observe(
            f"create run {index}",
            lambda e=experiment_id, s=start, n=name, t=tags: client.create_run(
                e, start_time=s, tags=t, run_name=n
            ),
            new="run",
        )
        runs.append(run)
    r0, r1, r2, r3 = (run.info.run_id for run in runs)
    rec.observe(
        "run name vs tag",
        lambda: client.create_run(alpha, tags={"mlflow.runName": "a"}, run_name="b"),
    )
    rec.observe("run in missing experiment", lambda: client.create_run("424242"))

    for step, (loss, stamp) in enumerate([(1.0, 10), (0.5, 20), (0.25, 15), (0.5, 40)]):
        rec.observe(
            f"loss {step}",
            lambda v=loss, t=stamp, s=step: client.log_metric(r0, "loss", v, t, s),
        )
    client.log_metric(r0, "loss", 0.5, 40, 3)  # the very same point again
    client.log_metric(r0, "acc", 0.9, 5, 7)
    client.log_metric(r0, "odd", math.nan, 1, 0)
    client.log_metric(r0, "odd", 3.0, 1, 0)
    client.log_batch(
        r1,
        metrics=[
            Metric("loss", 0.25, 5, 0),
            Metric("loss", 0.125, 5, 0),
            Metric("acc", -1.5, 6, 2),
            Metric("odd", math.inf, 7, 1),
            Metric("odd", -math.inf, 7, 1),
            Metric("step", 9.0, 8, 0),
        ],
        params=[Param("lr", "0.01"), Param("optimizer", "AdaGrad")],
        tags=[RunTag("team", "nlp")],
    )
    client.log_metric(r3, "loss", 1e308, 1, 0)
    client.log_metric(r3, "odd", math.nan, 2, 5)
    client.log_param(r0, "lr", "0.1")
    client.log_param(r0, "optimizer", "adam")
    rec.observe("same param again", lambda: client.log_param(r0, "lr", "0.1"))
    rec.observe("changed param", lambda: client.log_param(r0, "lr", "0.2"))
    rec.observe(
        "batch repeats a key",
        lambda: client.log_batch(r0, params=[Param("x", "1"), Param("x", "2")]),
    )
    client.set_tag(r0, "team", "vision")
    client.set_tag(r2, "team", "vision")
    client.set_tag(r2, "team", "robots")
    client.set_tag(r2, "gone", "soon")
    client.delete_tag(r2, "gone")
    rec.observe("delete missing tag", lambda: client.delete_tag(r2, "gone"))
    client.set_tag(r3, "mlflow.runName", "r3-renamed")
    client.set_terminated(r0, "FINISHED", end_time=5000)
    client.set_terminated(r1, "FAILED", end_time=6000)
    rec.observe("rename", lambda: client.update_run(r1, name="r1-renamed"))
    rec.observe("rename back", lambda: client.update_run(r1, name="r1"))
    rec.observe("delete run", lambda: client.delete_run(r3))
    rec.observe("write to deleted", lambda: client.log_param(r3, "p", "1"))
    rec.observe("tag deleted", lambda: client.set_tag(r3, "a", "b"))
    rec.observe("terminate deleted", lambda: client.set_terminated(r3, "KILLED"))
    rec.observe("delete deleted", lambda: client.delete_run(r3))
    rec.observe("restore active", lambda: client.restore_run(r0))
    rec.observe("get missing run", lambda: client.get_run("f" * 32))
    rec.observe("get malformed run id", lambda: client.get_run("not/an id"))
    rec.observe("tag missing run", lambda: client.set_tag("f" * 32, "a", "b"))
    for index, run_id in enumerate([r0, r1, r2, r3]):
        rec.observe(f"get run {index}", lambda r=run_id: client.get_run(r))

    _searches(client, rec, [alpha, beta])
    rec.observe("runs of gamma", lambda: client.search_runs([gamma]))
    rec.observe("runs of a missing id", lambda: client.search_runs(["424242"]))
    rec.observe("runs max_results=0", lambda: client.search_runs([alpha], "", 1, 0))
    rec.observe("restore run", lambda: client.restore_run(r3))
    rec.observe("get restored", lambda: client.get_run(r3))
    _histories(client, rec, [r0, r1, r3], ["loss", "odd", "acc", "step", "none"])
    rec.observe(
        "history of missing run", lambda: client.get_metric_history("f" * 32, "x")
    )

    rec.observe("delete gamma", lambda: client.delete_experiment(gamma))
    _tick()
    rec.observe("delete gamma again", lambda: client.delete_experiment(gamma))
    rec.observe("run in deleted", lambda: client.create_run(gamma))
    rec.observe("rename to taken", lambda: client.rename_experiment(beta, "alpha"))
    rec.observe("rename deleted", lambda: client.rename_experiment(gamma, "delta"))
    rec.observe("rename beta", lambda: client.rename_experiment(beta, "beta2"))
    _tick()
    rec.observe("restore active exp", lambda: client.restore_experiment(alpha))
    rec.observe("delete missing exp", lambda: client.delete_experiment("424242"))
    rec.observe("get deleted gamma", lambda: client.get_experiment(gamma))
    rec.observe("old name", lambda: client.get_experiment_by_name("beta"))
    rec.observe("new name", lambda: client.get_experiment_by_name("beta2"))
    _experiment_searches(client, rec)
    rec.observe("restore gamma", lambda: client.restore_experiment(gamma))
    rec.observe("gamma back", lambda: client.get_experiment_by_name("gamma"))


def fluent_workload(client: mlflow.MlflowClient, rec: Recorder) -> None:
    """Fluent logging with nested runs, then fluent searches and reads."""
    rec.observe("set experiment", lambda: mlflow.set_experiment("fluent"), "exp")
    rec.observe("set experiment again", lambda: mlflow.set_experiment("fluent"))
    run_ids = []
    with mlflow.start_run(run_name="outer") as outer:
        rec.normaliser.learn_run(outer)
        run_ids.append(outer.info.run_id)
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"layers": 3, "optimizer": "adam"})
        mlflow.log_metric("loss", 0.9, step=0, timestamp=100)
        mlflow.log_metrics({"loss": 0.5, "acc": 0.7}, step=1, timestamp=110)
        mlflow.log_metrics({"loss": math.nan, "acc": math.inf}, step=2, timestamp=120)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev", "mlflow.note.content": "hello"})
        for index in range(2):
            _tick()
            with mlflow.start_run(run_name=f"inner-{index}", nested=True) as inner:
                rec.normaliser.learn_run(inner)
                run_ids.append(inner.info.run_id)
                mlflow.log_metric("loss", 0.1 * index, step=index, timestamp=200)
                mlflow.log_param("fold", index)
                mlflow.set_tag("mlflow.runName", f"fold-{index}")
        rec.observe("same param again", lambda: mlflow.log_param("lr", 0.1))
        rec.observe("changed param", lambda: mlflow.log_param("lr", 0.2))
        rec.observe("flush", _flush)
    _tick()
    run = mlflow.start_run(run_name="failing")
    rec.normaliser.learn_run(run)
    run_ids.append(run.info.run_id)
    mlflow.log_metric("loss", 0.3, step=5, timestamp=300)
    mlflow.end_run(status="FAILED")
    _fluent_reads(client, rec, run_ids)


def _flush() -> None:
    # Errors of asynchronous writes surface here or at end_run, as in MLflow.
    mlflow.flush_async_logging()


def _fluent_reads(client, rec: Recorder, run_ids: list[str]) -> None:
    for text in RUN_FILTERS[:27]:
        for order in RUN_ORDERS[:13]:
            rec.observe(
                f"fluent search filter={text!r} order={order}",
                lambda t=text, o=order: mlflow.search_runs(
                    experiment_names=["fluent"],
                    filter_string=t,
                    order_by=o,
                    output_format="list",
                ),
            )
    rec.observe(
        "fluent search, nested only",
        lambda: mlflow.search_runs(
            filter_string=f"tags.mlflow.parentRunId = '{run_ids[0]}'",
            output_format="list",
        ),
    )
    rec.observe(
        "fluent search, two",
        lambda: mlflow.search_runs(max_results=2, output_format="list"),
    )
    for index, run_id in enumerate(run_ids):
        rec.observe(f"get run {index}", lambda r=run_id: mlflow.get_run(r))
    _histories(client, rec, run_ids, ["loss", "acc"])
    rec.observe("by name", lambda: mlflow.get_experiment_by_name("fluent"))
    rec.observe("experiments", lambda: mlflow.search_experiments())


class TestClientPath:
    def test_client_workload_reads_back_the_same(self, places: Places) -> None:
        """Through MlflowClient, every read-back and error matches sqlite's."""
        sqlite, trackio = run_both(places, client_workload)
        assert len(sqlite.outcomes) > 300
        assert_agree(sqlite, trackio)

    def test_direct_store_calls_match(self, places: Places) -> None:
        """Store-level calls MLflow's client never makes still match sqlite's."""

        def workload(client: mlflow.MlflowClient, rec: Recorder) -> None:
            store = client._tracking_client.store
            run = rec.observe(
                "create", lambda: store.create_run("0", "u", 5, [], "r"), "run"
            )
            run_id = run.info.run_id
            rec.observe(
                "history page 0 size 1",
                lambda: store.get_metric_history(run_id, "m", 1, None),
            )
            store.log_batch(
                run_id, [Metric("m", float(i), i, i) for i in range(5)], [], []
            )
            if PAGES_EVERYTHING:
                _paging_calls(store, rec, run_id)
            rec.observe(
                "search runs bad token",
                lambda: store.search_runs(["0"], "", ViewType.ALL, 10, None, "bad"),
            )
            rec.observe(
                "update with no status",
                lambda: store.update_run_info(run_id, None, None, None),
            )
            rec.observe("get", lambda: store.get_run(run_id))

        sqlite, trackio = run_both(places, workload)
        assert_agree(sqlite, trackio)


def _paging_calls(store: Any, rec: Recorder, run_id: str) -> None:
    rec.observe(
        "history token past the end",
        lambda: store.get_metric_history(run_id, "m", 2, "eyJvZmZzZXQiOiAxMH0="),
    )
    rec.observe(
        "history bad token",
        lambda: store.get_metric_history(run_id, "m", 2, "not-a-token"),
    )
    for view in VIEW_TYPES:
        rec.observe(
            f"search runs max_results None view={view}",
            lambda v=view: store.search_runs(["0"], "", v, None),
        )


class TestFluentPath:
    def test_fluent_workload_reads_back_the_same(self, places: Places) -> None:
        """Through the fluent API, every read-back and error matches sqlite's."""
        sqlite, trackio = run_both(places, fluent_workload, STORE_TIMES | RUN_TIMES)
        assert len(sqlite.outcomes) > 300
        assert_agree(sqlite, trackio)


class TestAsyncPath:
    def test_async_workload_reads_back_the_same(self, places, monkeypatch) -> None:
        """With MLFLOW_ENABLE_ASYNC_LOGGING, the fluent workload still matches."""
        monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")
        sqlite, trackio = run_both(places, fluent_workload, STORE_TIMES | RUN_TIMES)
        assert sqlite.outcomes["get run 0"]["data"]["params"]["lr"] == "0.1"
        assert_agree(sqlite, trackio)


# Property-based workloads ------------------------------------------------

NAMES = ["a", "b", "Default", "x-y", "a_b", "Ünï", "A"]
RUN_NAMES = ["r1", "r2", "it's", 'say "hi"', "a"]
METRIC_KEYS = ["loss", "acc", "step", "__x"]
PARAM_VALUES = ["0.1", "0.2", "adam", ""]
TAG_KEYS = ["team", "note", "mlflow.runName"]
TAG_VALUES = ["a", "b", "r9", ""]
METRIC_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -2.5, math.nan, math.inf, -math.inf]),
    st.sampled_from([1e308, -1e308, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6).map(float),
)
SIMPLE_RUN_FILTERS = [
    "",
    "metrics.loss > 0",
    "metrics.loss <= 0.5",
    "metrics.acc != 1",
    "metrics.step = 0",
    "params.lr = '0.1'",
    "params.lr != '0.1'",
    "params.lr LIKE '0.%'",
    "tags.team = 'a'",
    "tags.team ILIKE 'A%'",
    "attributes.status = 'RUNNING'",
    "attributes.status != 'FINISHED'",
    "attributes.run_name = 'r1'",
    "attributes.run_name LIKE 'r%'",
    "attributes.start_time > 2000",
    "attributes.end_time <= 50",
]
SIMPLE_RUN_ORDERS: list[list[str] | None] = [
    None,
    ["metrics.loss"],
    ["metrics.loss DESC"],
    ["metrics.acc ASC", "params.lr DESC"],
    ["params.lr"],
    ["tags.team DESC"],
    ["attributes.run_name"],
    ["attributes.end_time DESC"],
    ["attributes.status"],
    ["attributes.start_time ASC"],
]
SIMPLE_EXPERIMENT_FILTERS = ["", "name LIKE 'a%'", "tags.k = 'v'", "name != 'b'"]
SIMPLE_EXPERIMENT_ORDERS: list[list[str] | None] = [
    None,
    ["name DESC"],
    ["creation_time"],
    ["last_update_time DESC"],
]
STATUSES = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]

# How many operations all property-based examples applied to both stores.
OPERATIONS = {"count": 0, "explained": 0}
# What TrackioStore says when it refuses to merge two experiments' files.
MERGE_REFUSED = "would be stored as Trackio project"


class StoreMachine(RuleBasedStateMachine):
    """Applies random operations to both stores and compares every outcome."""

    template: Path
    root: Path

    experiments = Bundle("experiments")
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.places = Places(Path(tempfile.mkdtemp(dir=self.root)))
        self.places.prepare(self.template)
        self.stores = {
            SQLITE: sqlite_store(self.places),
            TRACKIO: trackio_store(self.places),
        }
        self.recorders = {
            kind: Recorder(Normaliser(artifact_roots(self.places, kind)))
            for kind in self.stores
        }
        self.ids: dict[str, dict[str, list[str]]] = {
            kind: {"exp": [], "run": []} for kind in self.stores
        }
        self.metric_keys: set[str] = set()

    def both(self, name: str, call: Callable[..., Any], new: str | None = None):
        """Apply one operation to each store; both outcomes must be equal."""
        OPERATIONS["count"] += 1
        results = {}
        label = f"{len(self.recorders[SQLITE].outcomes)} {name}"
        for kind, store in self.stores.items():
            results[kind] = self.recorders[kind].observe(
                label, lambda s=store, k=kind: call(s, self.ids[k]), new
            )
        assert_same(self.recorders[SQLITE], self.recorders[TRACKIO], [label])
        return results

    def _created(self, kind: str, results: dict[str, Any]) -> Any:
        if results[SQLITE] is None:
            return multiple()
        for store_kind, result in results.items():
            found = result if kind == "exp" else result.info.run_id
            self.ids[store_kind][kind].append(found)
        return len(self.ids[SQLITE][kind]) - 1

    @initialize(target=experiments)
    def default_experiment(self):
        for kind in self.stores:
            self.ids[kind]["exp"].append("0")
        return 0

    @rule(target=experiments, name=st.sampled_from(NAMES))
    def create_experiment(self, name: str):
        if self._trackio_refuses(name):
            return multiple()
        results = self.both(
            f"create experiment {name!r}",
            lambda store, ids: store.create_experiment(name),
            new="exp",
        )
        _tick()
        return self._created("exp", results)

    def _trackio_refuses(self, name: str) -> bool:
        """Whether Trackio must refuse a free name whose project file is taken.

        That is an explained difference (docs/conformance.md): sqlite would
        create the experiment, so neither store gets it and the run goes on.
        """
        if self.stores[SQLITE].get_experiment_by_name(name) is not None:
            return False
        canonical = canonical_project_name(name)
        if not (self.places.trackio_dir / f"{canonical}.db").exists():
            return False
        with pytest.raises(MlflowException, match=MERGE_REFUSED):
            self.stores[TRACKIO].create_experiment(name)
        OPERATIONS["explained"] += 1
        return True

    @rule(
        target=runs,
        experiment=experiments,
        offset=st.integers(0, 999),
        name=st.sampled_from(RUN_NAMES),
        nested_in=st.none() | runs,
    )
    def create_run(self, experiment: int, offset: int, name: str, nested_in):
        # Distinct start times: ties would be broken by the generated run ids.
        start = 1000 * (len(self.ids[SQLITE]["run"]) + 1) + offset

        def call(store, ids):
            tags = []
            if nested_in is not None:
                tags.append(RunTag("mlflow.parentRunId", ids["run"][nested_in]))
            return store.create_run(ids["exp"][experiment], "user", start, tags, name)

        results = self.both(f"create run {name!r}", call, new="run")
        _tick()
        return self._created("run", results)

    @rule(
        run=runs,
        key=st.sampled_from(METRIC_KEYS),
        value=METRIC_VALUES,
        step=st.integers(-3, 5),
        timestamp=st.integers(0, 100),
    )
    def log_metric(self, run: int, key: str, value: float, step: int, timestamp):
        self.metric_keys.add(key)
        self.both(
            f"log metric {key}={value!r} step {step} at {timestamp}",
            lambda store, ids: store.log_metric(
                ids["run"][run], Metric(key, value, timestamp, step)
            ),
        )

    @rule(
        run=runs,
        metrics=st.lists(
            st.tuples(
                st.sampled_from(METRIC_KEYS),
                METRIC_VALUES,
                st.integers(0, 3),
                st.integers(0, 10),
            ),
            max_size=4,
        ),
        params=st.dictionaries(
            st.sampled_from(["lr", "opt"]), st.sampled_from(PARAM_VALUES), max_size=2
        ),
        tags=st.dictionaries(
            st.sampled_from(TAG_KEYS), st.sampled_from(TAG_VALUES), max_size=2
        ),
    )
    def log_batch(self, run: int, metrics, params, tags):
        self.metric_keys.update(key for key, *_ in metrics)
        self.both(
            f"log batch {metrics} {params} {tags}",
            lambda store, ids: store.log_batch(
                ids["run"][run],
                [Metric(k, v, t, s) for k, v, s, t in metrics],
                [Param(k, v) for k, v in params.items()],
                [RunTag(k, v) for k, v in tags.items()],
            ),
        )

    @rule(
        run=runs,
        key=st.sampled_from(["lr", "opt"]),
        value=st.sampled_from(PARAM_VALUES),
    )
    def log_param(self, run: int, key: str, value: str):
        self.both(
            f"log param {key}={value!r}",
            lambda store, ids: store.log_param(ids["run"][run], Param(key, value)),
        )

    @rule(run=runs, key=st.sampled_from(TAG_KEYS), value=st.sampled_from(TAG_VALUES))
    def set_tag(self, run: int, key: str, value: str):
        self.both(
            f"set tag {key}={value!r}",
            lambda store, ids: store.set_tag(ids["run"][run], RunTag(key, value)),
        )

    @rule(run=runs, key=st.sampled_from(TAG_KEYS))
    def delete_tag(self, run: int, key: str):
        self.both(
            f"delete tag {key}",
            lambda store, ids: store.delete_tag(ids["run"][run], key),
        )

    @rule(
        run=runs,
        status=st.sampled_from(STATUSES),
        end_time=st.none() | st.integers(0, 100),
        name=st.none() | st.sampled_from(RUN_NAMES),
    )
    def update_run(self, run: int, status: str, end_time, name):
        self.both(
            f"update run {status} {end_time} {name!r}",
            lambda store, ids: store.update_run_info(
                ids["run"][run], RunStatus.from_string(status), end_time, name
            ),
        )

    @rule(run=runs, delete=st.booleans())
    def delete_or_restore_run(self, run: int, delete: bool):
        verb = "delete" if delete else "restore"
        self.both(
            f"{verb} run",
            lambda store, ids: getattr(store, f"{verb}_run")(ids["run"][run]),
        )

    @rule(experiment=experiments, delete=st.booleans())
    def delete_or_restore_experiment(self, experiment: int, delete: bool):
        verb = "delete" if delete else "restore"
        self.both(
            f"{verb} experiment",
            lambda store, ids: getattr(store, f"{verb}_experiment")(
                ids["exp"][experiment]
            ),
        )
        _tick()

    @rule(experiment=experiments, name=st.sampled_from(NAMES))
    def rename_experiment(self, experiment: int, name: str):
        self.both(
            f"rename experiment to {name!r}",
            lambda store, ids: store.rename_experiment(ids["exp"][experiment], name),
        )
        _tick()

    @rule(experiment=experiments, value=st.sampled_from(["v", "w"]))
    def set_experiment_tag(self, experiment: int, value: str):
        self.both(
            f"set experiment tag k={value}",
            lambda store, ids: store.set_experiment_tag(
                ids["exp"][experiment], ExperimentTag("k", value)
            ),
        )

    @rule(
        data=st.data(),
        text=st.sampled_from(SIMPLE_RUN_FILTERS),
        order=st.sampled_from(SIMPLE_RUN_ORDERS),
        view=st.sampled_from(VIEW_TYPES),
        size=st.sampled_from([1, 2, 1000]),
    )
    def search_runs(self, data, text, order, view, size):
        chosen = data.draw(st.sets(st.integers(0, 20), max_size=3))

        def call(store, ids):
            experiments = [ids["exp"][i % len(ids["exp"])] for i in sorted(chosen)]
            return _all_pages(
                lambda token: store.search_runs(
                    experiments, text, view, size, order, token
                )
            )

        self.both(f"search runs {text!r} {order} view {view} size {size}", call)

    @rule(
        text=st.sampled_from(SIMPLE_EXPERIMENT_FILTERS),
        order=st.sampled_from(SIMPLE_EXPERIMENT_ORDERS),
        view=st.sampled_from(VIEW_TYPES),
        size=st.sampled_from([1, 3, 1000]),
    )
    def search_experiments(self, text, order, view, size):
        self.both(
            f"search experiments {text!r} {order} view {view} size {size}",
            lambda store, ids: _all_pages(
                lambda token: store.search_experiments(view, size, text, order, token)
            ),
        )

    @rule(
        run=runs,
        key=st.sampled_from(METRIC_KEYS),
        size=st.none() | st.integers(1, 3),
    )
    def get_history(self, run: int, key: str, size):
        self.both(
            f"history {key} size {size}",
            lambda store, ids: _all_pages(
                lambda token: store.get_metric_history(
                    ids["run"][run], key, size, token
                )
            ),
        )

    @rule(run=runs)
    def get_run(self, run: int):
        self.both("get run", lambda store, ids: store.get_run(ids["run"][run]))

    def teardown(self) -> None:
        try:
            self._read_back_everything()
        finally:
            for store in self.stores.values():
                close_store(store)

    def _read_back_everything(self) -> None:
        self.both(
            "all experiments",
            lambda store, ids: store.search_experiments(ViewType.ALL, 1000),
        )
        self.both(
            "all runs",
            lambda store, ids: store.search_runs(
                ids["exp"], "", ViewType.ALL, 1000, None, None
            ),
        )
        for key in sorted(self.metric_keys):
            self.both(
                f"every history of {key}",
                lambda store, ids, k=key: [
                    store.get_metric_history(run_id, k) for run_id in ids["run"]
                ],
            )


def _all_pages(fetch: Callable[[str | None], Any]) -> list[Any]:
    pages, token = [], None
    while True:
        page = fetch(token)
        pages.append(page)
        token = page.token if isinstance(page, PagedList) else page[1]
        if token is None or len(pages) > 50:
            return pages


class TestPropertyBased:
    def test_random_workloads_agree(self, sqlite_template, tmp_path, capsys) -> None:
        """Random operation sequences give equal outcomes and read-backs."""
        StoreMachine.template = sqlite_template
        StoreMachine.root = tmp_path
        before = OPERATIONS["count"]
        run_state_machine_as_test(
            StoreMachine,
            settings=settings(
                max_examples=int(os.environ.get("CONFORMANCE_EXAMPLES", "60")),
                stateful_step_count=40,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        executed = OPERATIONS["count"] - before
        with capsys.disabled():
            print(f"\nproperty-based workloads: {executed} operations on both stores")
        assert executed > 500
