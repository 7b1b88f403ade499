"""Run one workload against MLflow's own sqlite store and TrackioStore, compare.

A workload is a function that drives one store (through the fluent API, an
``MlflowClient`` or the store object) and reports every read-back and every
error to a `Recorder`. The recorder turns what it sees into plain data in
which what legitimately differs between the stores (generated ids, artifact
roots, generated times) is replaced by labels both stores share; the two
recordings must then be equal. docs/conformance.md lists every difference
that the comparison allows and why.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import (
    Dataset,
    DatasetInput,
    Experiment,
    Metric,
    Run,
    RunData,
    RunInfo,
    RunInputs,
)
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.async_logging.run_operations import RunOperations

SQLITE = "sqlite"
TRACKIO = "trackio"

# Times a store stamps itself; a workload cannot choose them, so only whether
# one is there is compared (ordering by them is compared through searches).
STORE_TIMES = frozenset({"creation_time", "last_update_time"})
RUN_TIMES = frozenset({"start_time", "end_time"})

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Places:
    """Where one test keeps the two stores, side by side under one root."""

    root: Path
    template_dir: Path | None = None

    @property
    def sqlite_dir(self) -> Path:
        return self.root / "sqlite"

    @property
    def trackio_dir(self) -> Path:
        return self.root / "trackio"

    @property
    def sqlite_uri(self) -> str:
        return f"sqlite:///{(self.sqlite_dir / 'mlflow.db').as_posix()}"

    @property
    def trackio_uri(self) -> str:
        return f"trackio://{self.trackio_dir.as_posix()}"

    @property
    def sqlite_artifacts(self) -> str:
        return (self.sqlite_dir / "artifacts").as_posix()

    def uri(self, kind: str) -> str:
        return self.sqlite_uri if kind == SQLITE else self.trackio_uri

    def prepare(self, template: Path) -> None:
        """Lay a fresh, migrated sqlite database and an empty Trackio directory."""
        self.sqlite_dir.mkdir(parents=True, exist_ok=True)
        self.trackio_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, self.sqlite_dir / "mlflow.db")
        self.template_dir = template.parent


def build_sqlite_template(directory: Path) -> Path:
    """Create one migrated sqlite database to copy for each test.

    Running MLflow's migrations takes about a second; a copy of the migrated
    file is a fresh store in a few milliseconds.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = directory / "template.db"
    store = SqlAlchemyStore(f"sqlite:///{path.as_posix()}", directory.as_posix())
    store.engine.dispose()
    return path


def sqlite_store(places: Places):
    """Return MLflow's own store over the test's sqlite database."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(places.sqlite_uri, places.sqlite_artifacts)


def trackio_store(places: Places):
    """Return a TrackioStore over the test's Trackio directory."""
    from sdk import TrackioStore

    return TrackioStore(places.trackio_uri)


def close_store(store: Any) -> None:
    """Release a store's database connections."""
    if hasattr(store, "engine"):
        store.engine.dispose()
    else:
        store.backend.close()


def artifact_roots(places: Places, kind: str, cwd: Path | None = None) -> list[str]:
    """Return the prefixes under which a store puts artifact locations."""
    if kind == TRACKIO:
        return [(places.trackio_dir.resolve() / "mlflow-artifacts").as_uri()]
    roots = [places.sqlite_artifacts]
    if places.template_dir is not None:
        # The copied database keeps the default experiment's original root.
        roots.append(places.template_dir.as_posix())
    if cwd is not None:
        # Through the tracking URI MLflow gives the sqlite store ./mlruns.
        roots.append((cwd / "mlruns").as_posix())
    return roots


@dataclass
class Normaliser:
    """Turns MLflow entities into plain data both stores can be compared by."""

    roots: list[str]
    masked_times: frozenset[str] = STORE_TIMES
    labels: dict[str, str] = field(default_factory=dict)

    def learn(self, kind: str, value: str | None) -> None:
        """Name a store-generated id by its kind and the order it appeared in."""
        if value is not None and value not in self.labels:
            count = sum(label.startswith(kind) for label in self.labels.values())
            self.labels[value] = f"{kind}#{count}"

    def learn_run(self, run: Run | RunInfo | None) -> None:
        """Learn a run's id and its experiment's id."""
        info = run.info if isinstance(run, Run) else run
        if info is not None:
            self.learn("exp", info.experiment_id)
            self.learn("run", info.run_id)

    def learn_result(self, new: str | None, result: Any) -> None:
        """Learn the ids of what a call created (see `Recorder.observe`)."""
        if new == "run":
            self.learn_run(result)
        elif new == "exp":
            found = getattr(result, "experiment_id", result)
            self.learn("exp", found)

    def plain(self, value: Any) -> Any:
        """Return `value` as comparable plain data."""
        for kind, convert in self._converters():
            if isinstance(value, kind):
                return convert(value)
        if isinstance(value, dict):
            return {self.plain(k): self.plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.plain(item) for item in value]
        if isinstance(value, RunOperations):
            # Asynchronous writes: what they did shows in the flush and reads.
            return "<async>"
        if isinstance(value, float):
            return "NaN" if math.isnan(value) else value
        if isinstance(value, str):
            return self._string(value)
        return value

    def _converters(self) -> Iterable[tuple[type, Callable[[Any], Any]]]:
        return [
            (PagedList, self._paged),
            (Run, self._run),
            (RunInfo, self._info),
            (RunData, self._data),
            (RunInputs, self._inputs),
            (Experiment, self._experiment),
            (Metric, self._metric),
            (DatasetInput, self._dataset_input),
            (Dataset, self._dataset),
        ]

    def _string(self, text: str) -> str:
        if text in self.labels:
            return self.labels[text]
        for root in self.roots:
            if text.startswith(root):
                parts = text[len(root) :].split("/")
                return "<root>" + "/".join(self.labels.get(p, p) for p in parts)
        if _RUN_ID.match(text):
            # An id no workload step announced: name it in order of appearance.
            self.learn("run?", text)
            return self.labels[text]
        return text

    def _time(self, name: str, value: int | None) -> Any:
        if name in self.masked_times and value is not None:
            return "<time>"
        return value

    def _paged(self, page: PagedList) -> dict[str, Any]:
        return {
            "items": [self.plain(item) for item in page],
            "more": page.token is not None,
        }

    def _run(self, run: Run) -> dict[str, Any]:
        # MLflow 2's runs have no outputs (logged models came with MLflow 3).
        outputs = getattr(run, "outputs", None)
        return {
            "info": self._info(run.info),
            "data": self._data(run.data),
            "inputs": self._inputs(run.inputs),
            "outputs": None
            if outputs is None
            else sorted(m.model_id for m in outputs.model_outputs),
        }

    def _info(self, info: RunInfo) -> dict[str, Any]:
        return {
            "run_id": self.plain(info.run_id),
            "experiment_id": self.plain(str(info.experiment_id)),
            "user_id": info.user_id,
            "status": info.status,
            "start_time": self._time("start_time", info.start_time),
            "end_time": self._time("end_time", info.end_time),
            "lifecycle_stage": info.lifecycle_stage,
            "artifact_uri": self.plain(info.artifact_uri),
            "run_name": info.run_name,
        }

    def _data(self, data: RunData) -> dict[str, Any]:
        latest = sorted(data._metric_objs, key=lambda m: m.key)
        return {
            "metrics": [self._metric(m) for m in latest],
            "params": dict(sorted(data.params.items())),
            "tags": {k: self.plain(v) for k, v in sorted(data.tags.items())},
        }

    def _inputs(self, inputs: RunInputs | None) -> list[Any]:
        if inputs is None:
            return []
        datasets = [self._dataset_input(d) for d in inputs.dataset_inputs]
        return sorted(datasets, key=repr)

    def _dataset_input(self, dataset_input: DatasetInput) -> dict[str, Any]:
        return {
            "dataset": self._dataset(dataset_input.dataset),
            "tags": sorted((t.key, t.value) for t in dataset_input.tags),
        }

    def _dataset(self, dataset: Dataset) -> list[Any]:
        return [
            dataset.name,
            dataset.digest,
            dataset.source_type,
            dataset.source,
            dataset.schema,
            dataset.profile,
        ]

    def _experiment(self, experiment: Experiment) -> dict[str, Any]:
        return {
            "experiment_id": self.plain(experiment.experiment_id),
            "name": experiment.name,
            "artifact_location": self.plain(experiment.artifact_location),
            "lifecycle_stage": experiment.lifecycle_stage,
            "tags": dict(sorted(experiment.tags.items())),
            "creation_time": self._time("creation_time", experiment.creation_time),
            "last_update_time": self._time(
                "last_update_time", experiment.last_update_time
            ),
        }

    def _metric(self, metric: Metric) -> list[Any]:
        return [
            metric.key,
            self.plain(float(metric.value)),
            self._time("timestamp", metric.timestamp),
            metric.step,
            # MLflow 2's metrics name no logged model.
            getattr(metric, "model_id", None),
        ]


def error_of(exc: BaseException) -> dict[str, Any]:
    """Return what is compared of an error: its class and MLflow error code."""
    code = exc.error_code if isinstance(exc, MlflowException) else None
    return {"error": type(exc).__name__, "code": code}


@dataclass
class Recorder:
    """Collects the outcome of every observed call of one workload run."""

    normaliser: Normaliser
    outcomes: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def observe(
        self, name: str, call: Callable[[], Any], new: str | None = None
    ) -> Any:
        """Run `call`, record its plain result or its error; return the result.

        `new` says that the result is a new "run" or "exp" (an id, a run or
        an experiment), so that its ids get labels before it is recorded.
        """
        if name in self.outcomes:
            raise AssertionError(f"the workload observes {name!r} twice")
        try:
            result = call()
        except Exception as exc:
            self.outcomes[name] = error_of(exc)
            self.messages[name] = str(exc)[:300]
            return None
        self.normaliser.learn_result(new, result)
        self.outcomes[name] = self.normaliser.plain(result)
        return result


def differences(
    sqlite: Recorder, trackio: Recorder, names: Iterable[str] | None = None
) -> list[str]:
    """Return one readable line per observation on which the stores disagree."""
    lines = []
    if names is None:
        names = sqlite.outcomes.keys() | trackio.outcomes.keys()
    for name in names:
        theirs, ours = sqlite.outcomes.get(name), trackio.outcomes.get(name)
        for path, left, right in _leaf_differences(theirs, ours, ""):
            lines.append(
                f"{name}{path}: sqlite {left!r}, trackio {right!r}"
                f" [{sqlite.messages.get(name, '')} | {trackio.messages.get(name, '')}]"
            )
    return sorted(lines)


def _leaf_differences(left: Any, right: Any, path: str) -> Iterable[tuple]:
    if left == right:
        return
    if isinstance(left, dict) and isinstance(right, dict):
        for key in left.keys() | right.keys():
            yield from _leaf_differences(left.get(key), right.get(key), f"{path}.{key}")
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (one, other) in enumerate(zip(left, right, strict=True)):
            yield from _leaf_differences(one, other, f"{path}[{index}]")
    else:
        yield path, left, right


def assert_same(
    sqlite: Recorder, trackio: Recorder, names: Iterable[str] | None = None
) -> None:
    """Fail with the observations (all, or `names`) on which the stores disagree."""
    if names is None:
        assert list(sqlite.outcomes) == list(trackio.outcomes), "different workloads"
    found = differences(sqlite, trackio, names)
    assert not found, "the stores disagree:\n" + "\n".join(found[:40])
