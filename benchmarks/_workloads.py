"""The in-process workloads: logging through MLflow's APIs, and reading back.

Each workload measures one repetition on one backend at a time; the runner in
`benchmarks.__main__` alternates the backends. What a repetition needs first
(a store, a run, the points or runs to read) is made outside the timed region.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from benchmarks._backends import (
    BARE_SQLITE,
    FILE,
    NOOP,
    SQLITE,
    TRACKIO,
    TRACKIO_API,
    Backend,
    Session,
    quiet_stdout,
    trackio_storage,
)

METRIC_KEYS = ("loss", "accuracy", "learning_rate", "grad_norm", "epoch")
# Five keys over 200 steps make 1,000 metrics: MLflow's limit for one call.
STEPS_PER_BATCH = 200
POINTS_PER_BATCH = STEPS_PER_BATCH * len(METRIC_KEYS)
_START_MS = 1_750_000_000_000


@dataclass(frozen=True)
class Sizes:
    """How much each workload does; the defaults are the issue's sizes."""

    fluent_steps: int = 20_000
    # MLflow's sqlite:/// store takes about 8 ms a fluent call on the reference
    # machine and its file:// store about 1 ms plus a slow read-back: 20,000
    # steps would take minutes a repetition, so they log this many and are
    # compared per step (their cost per step does not grow with the run).
    slow_store_fluent_steps: int = 2_000
    batch_calls: int = 100
    autolog_steps: int = 2_000
    history_points: int = 100_000
    search_runs: int = 1_000
    import_runs: int = 10
    memory_points: int = 1_000_000
    # Calls of 1,000 points a backend: about a second over MLflow's REST API.
    remote_calls: int = 20

    def scaled(self, factor: float) -> Sizes:
        """Return every size times `factor` (the import count stays)."""

        def scale(value: int, minimum: int) -> int:
            return max(minimum, round(value * factor))

        return replace(
            self,
            fluent_steps=scale(self.fluent_steps, 10),
            slow_store_fluent_steps=scale(self.slow_store_fluent_steps, 10),
            batch_calls=scale(self.batch_calls, 1),
            autolog_steps=scale(self.autolog_steps, 10),
            history_points=scale(self.history_points, 10),
            search_runs=scale(self.search_runs, 2),
            memory_points=scale(self.memory_points, POINTS_PER_BATCH),
            remote_calls=scale(self.remote_calls, 1),
        )

    @classmethod
    def quick(cls) -> Sizes:
        """Return tiny sizes for a smoke test of the whole suite."""
        return replace(cls().scaled(0.01), import_runs=2)


@dataclass
class Workload:
    """One row group of the table: a task, its unit, the backends that do it."""

    key: str
    title: str
    unit: str
    backends: tuple[Backend, ...]
    higher_is_better: bool = False
    # Repetitions per backend when not the run's default (subprocess timings).
    repetitions: int | None = None
    notes: list[str] = field(default_factory=list)
    # Facts observed while measuring that a target needs besides the medians.
    observations: dict[str, Any] = field(default_factory=dict)
    # Figures measured alongside another backend's (rows of their own).
    side_samples: dict[Backend, list[float]] = field(default_factory=dict)

    def prepare(self, backend: Backend, session: Session) -> Any:
        """Build what every repetition reads (untimed); None if nothing."""
        return None

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        """Run one repetition and return its figure in `unit`."""
        raise NotImplementedError

    def release(self, backend: Backend, session: Session, prepared: Any) -> None:
        """Free what `prepare` built."""


def step_values(step: int) -> dict[str, float]:
    """Return the five metric values a training loop logs at one step."""
    return {
        "loss": 1.0 / (step + 1),
        "accuracy": 1.0 - 1.0 / (step + 2),
        "learning_rate": 0.001,
        "grad_norm": 0.5 + (step % 7) / 10,
        "epoch": float(step // 100),
    }


def metric_batch(first_step: int, steps: int) -> list[Metric]:
    """Return the metrics of `steps` consecutive steps, one timestamp a step."""
    return [
        Metric(key, value, _START_MS + step, step)
        for step in range(first_step, first_step + steps)
        for key, value in step_values(step).items()
    ]


def log_steps_in_batches(client: MlflowClient, run_id: str, steps: int) -> None:
    """Log `steps` steps of five metrics with one `log_batch` per 200 steps."""
    for first in range(0, steps, STEPS_PER_BATCH):
        count = min(STEPS_PER_BATCH, steps - first)
        client.log_batch(run_id, metrics=metric_batch(first, count))


def check_count(what: str, found: int, expected: int) -> None:
    if found != expected:
        raise RuntimeError(f"{what}: read back {found} points, expected {expected}.")


# Trackio's own API -------------------------------------------------------


def trackio_api_log(session: Session, steps: int) -> tuple[float, Any]:
    """Log `steps` steps with `trackio.log`; return (seconds, run).

    The time includes `trackio.finish()`: before it, the points are only in
    Trackio's in-memory queue.
    """
    import trackio

    with quiet_stdout():
        run = trackio.init(
            project=session.unique_name("bench"),
            name="bench",
            auto_log_cpu=False,
            auto_log_gpu=False,
        )
    gc.collect()
    started = time.perf_counter()
    for step in range(steps):
        trackio.log(step_values(step), step=step)
    with quiet_stdout():
        trackio.finish()
    return time.perf_counter() - started, run


def trackio_api_history(run: Any) -> list[dict]:
    """Read the `loss` history with Trackio's own reader."""
    return trackio_storage().get_metric_values(
        run.project, run.name, "loss", run_id=run.id
    )


# Workloads ---------------------------------------------------------------


class FluentLogMetrics(Workload):
    """`mlflow.log_metrics` of five metrics, one call a step."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__(
            key="fluent",
            title=f"fluent mlflow.log_metrics, 5 metrics a step, "
            f"{sizes.fluent_steps:,} steps",
            unit="µs/step",
            backends=(NOOP, TRACKIO, SQLITE, FILE, TRACKIO_API),
        )
        self.steps = sizes.fluent_steps
        self.slow_store_steps = min(sizes.slow_store_fluent_steps, self.steps)
        if self.slow_store_steps < self.steps:
            self.notes.append(
                f"sqlite:/// and file:// log {self.slow_store_steps:,} of the "
                f"{self.steps:,} steps (about 8 ms and 1 ms a step); every "
                "backend is compared per step."
            )

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        if backend is TRACKIO_API:
            elapsed, run = trackio_api_log(session, self.steps)
            check_count(backend.label, len(trackio_api_history(run)), self.steps)
            return elapsed / self.steps * 1e6
        steps = self.slow_store_steps if backend in (SQLITE, FILE) else self.steps
        uri = session.new_store_uri(backend)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("fluent")
        run_id = mlflow.start_run().info.run_id
        gc.collect()
        started = time.perf_counter()
        for step in range(steps):
            mlflow.log_metrics(step_values(step), step=step)
        mlflow.end_run()
        elapsed = time.perf_counter() - started
        history = MlflowClient(uri).get_metric_history(run_id, "loss")
        check_count(backend.label, len(history), steps)
        session.release_store(uri)
        return elapsed / steps * 1e6


class ClientLogBatch(Workload):
    """`MlflowClient.log_batch` of 1,000 metrics a call, against a bare insert."""

    def __init__(self, sizes: Sizes) -> None:
        self.calls = sizes.batch_calls
        self.points = self.calls * POINTS_PER_BATCH
        super().__init__(
            key="log_batch",
            title=f"MlflowClient.log_batch, 1,000 metrics a call, {self.calls:,} "
            f"calls ({self.points:,} points)",
            unit="points/s",
            higher_is_better=True,
            backends=(NOOP, TRACKIO, SQLITE, FILE, TRACKIO_API, BARE_SQLITE),
            notes=[
                "A call holds 200 steps of 5 metrics. sqlite3 (bare): "
                "executemany of one (run_id, key, value, timestamp, step) row a "
                "point into an unindexed table, WAL, synchronous=NORMAL (the "
                "trackio:// store's setting), one transaction a call. "
                "trackio.log: one call a step, finish() included."
            ],
        )

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        if backend is BARE_SQLITE:
            return self.points / _bare_sqlite_inserts(session, self.calls)
        if backend is TRACKIO_API:
            steps = self.calls * STEPS_PER_BATCH
            elapsed, _ = trackio_api_log(session, steps)
            return self.points / elapsed
        uri = session.new_store_uri(backend)
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("batch")).info.run_id
        batches = [
            metric_batch(call * STEPS_PER_BATCH, STEPS_PER_BATCH)
            for call in range(self.calls)
        ]
        gc.collect()
        started = time.perf_counter()
        for batch in batches:
            client.log_batch(run_id, metrics=batch)
        elapsed = time.perf_counter() - started
        history = client.get_metric_history(run_id, "loss")
        check_count(backend.label, len(history), self.calls * STEPS_PER_BATCH)
        session.release_store(uri)
        return self.points / elapsed


def _bare_sqlite_inserts(session: Session, calls: int) -> float:
    """Insert the same points with plain sqlite3; return the seconds taken."""
    import sqlite3

    path = session.fresh_directory("bare") / "metrics.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        "CREATE TABLE metrics (run_id TEXT NOT NULL, key TEXT NOT NULL,"
        " value REAL NOT NULL, timestamp INTEGER NOT NULL, step INTEGER NOT NULL)"
    )
    run_id = "0" * 32
    batches = [
        [
            (run_id, m.key, m.value, m.timestamp, m.step)
            for m in metric_batch(call * STEPS_PER_BATCH, STEPS_PER_BATCH)
        ]
        for call in range(calls)
    ]
    gc.collect()
    started = time.perf_counter()
    for rows in batches:
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


class MetricHistory(Workload):
    """`MlflowClient.get_metric_history` of one metric of a long run."""

    def __init__(self, sizes: Sizes) -> None:
        self.points = sizes.history_points
        super().__init__(
            key="history",
            title=f"get_metric_history of a {self.points:,}-point metric",
            unit="s",
            backends=(NOOP, TRACKIO, SQLITE, FILE, TRACKIO_API),
            notes=[
                "The run holds 5 metrics of that many steps each (logged with "
                "log_batch, untimed); 'loss' is read, after an untimed write "
                "to another metric so that no read is served from trackio://'s "
                "cache of the last history. trackio.log: Trackio's own reader, "
                "SQLiteStorage.get_metric_values."
            ],
        )

    def prepare(self, backend: Backend, session: Session) -> Any:
        if backend is TRACKIO_API:
            return trackio_api_log(session, self.points)[1]
        uri = session.new_store_uri(backend)
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("history")).info.run_id
        log_steps_in_batches(client, run_id, self.points)
        return uri, run_id

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        gc.collect()
        if backend is TRACKIO_API:
            started = time.perf_counter()
            found = len(trackio_api_history(prepared))
        else:
            uri, run_id = prepared
            client = MlflowClient(uri)
            # trackio:// keeps the last history it read until its file changes;
            # a write makes every repetition a read from disk.
            client.log_metric(run_id, "untimed", 0.0)
            started = time.perf_counter()
            found = len(client.get_metric_history(run_id, "loss"))
        elapsed = time.perf_counter() - started
        check_count(backend.label, found, self.points)
        return elapsed

    def release(self, backend: Backend, session: Session, prepared: Any) -> None:
        if backend is not TRACKIO_API:
            session.release_store(prepared[0])


class SearchRuns(Workload):
    """`MlflowClient.search_runs` with a metric filter over many finished runs."""

    FILTER = "metrics.loss < 0.5"

    def __init__(self, sizes: Sizes) -> None:
        self.runs = sizes.search_runs
        super().__init__(
            key="search",
            title=f"search_runs '{self.FILTER}' over {self.runs:,} runs",
            unit="s",
            backends=(NOOP, TRACKIO, SQLITE, FILE),
            notes=[
                "Each run has 3 params, 2 metrics and a tag and is FINISHED; "
                "half of them match."
            ],
        )

    def prepare(self, backend: Backend, session: Session) -> Any:
        uri = session.new_store_uri(backend)
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("search")
        for index in range(self.runs):
            run_id = client.create_run(
                experiment_id,
                run_name=f"run-{index:05d}",
                tags={"team": "ab"[index % 2]},
            ).info.run_id
            client.log_batch(
                run_id,
                metrics=[
                    Metric("loss", index / self.runs, _START_MS, 0),
                    Metric("accuracy", 1 - index / self.runs, _START_MS, 0),
                ],
                params=[
                    Param("learning_rate", str(10 ** -(index % 4))),
                    Param("batch_size", str(2 ** (index % 8))),
                    Param("optimizer", ("adam", "sgd")[index % 2]),
                ],
            )
            client.set_terminated(run_id)
        return uri, experiment_id

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        uri, experiment_id = prepared
        client = MlflowClient(uri)
        gc.collect()
        started = time.perf_counter()
        found = client.search_runs([experiment_id], self.FILTER, max_results=1000)
        elapsed = time.perf_counter() - started
        check_count(backend.label, len(found), min(1000, (self.runs + 1) // 2))
        return elapsed

    def release(self, backend: Backend, session: Session, prepared: Any) -> None:
        session.release_store(prepared[0])
