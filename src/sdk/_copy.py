"""
Copy experiments and runs between two MLflow tracking URIs, resumably.

Used by ``mlflow-trackio import`` and ``export``. Everything goes through
`MlflowClient`, so either side may be any tracking URI MLflow can open.

Each copy carries tags naming its source: ``mlflow_trackio.source_run_id`` and
``mlflow_trackio.source_uri`` from the moment it is created, and
``mlflow_trackio.copy_complete`` once every param, tag and metric point is in
and its status and end time are set. Another copy then:

- skips a source run that has a complete copy, or whose copy was deleted;
- completes an incomplete copy: params and tags it lacks are added, and per
  metric only the points it lacks (the source history minus the copy's, as
  multisets of step, timestamp and value) are written, so nothing doubles;
- skips a run that is itself a copy of a run in the destination (a round trip);
- copies the rest as new runs, parents before their children.

A source run still RUNNING is copied but not marked complete, so the next copy
adds what it logged since.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse, urlunparse

from mlflow import MlflowClient
from mlflow.entities import (
    Experiment,
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_USER

T = TypeVar("T")

TAG_PREFIX = "mlflow_trackio."
SOURCE_RUN_TAG = "mlflow_trackio.source_run_id"
SOURCE_URI_TAG = "mlflow_trackio.source_uri"
COMPLETE_TAG = "mlflow_trackio.copy_complete"

# MLflow's log_batch limits (mlflow.utils.validation): 1000 metrics, 100 params
# and 100 tags per call.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
TAGS_PER_BATCH = 100
_PAGE = 1000

_CREATE_TAGS = (MLFLOW_PARENT_RUN_ID, MLFLOW_USER, SOURCE_RUN_TAG, SOURCE_URI_TAG)


@dataclass
class Tally:
    """How many runs a copy created, completed, updated and found there."""

    copied: int = 0
    resumed: int = 0
    running: int = 0
    present: int = 0

    def summary(self) -> str:
        """Return one sentence for the user."""
        text = (
            f"{self.copied} run(s) copied, {self.resumed} interrupted copy(ies) "
            f"completed, {self.present} already there"
        )
        if self.running:
            text += f", {self.running} still running in the source updated"
        return text + "."


class Copier:
    """Copies runs from one tracking URI to another; see the module docstring."""

    def __init__(self, source_uri: str, dest_uri: str) -> None:
        self.source = MlflowClient(tracking_uri=source_uri)
        self.dest = MlflowClient(tracking_uri=dest_uri)
        self.source_label = _without_password(source_uri)
        self.tally = Tally()
        # Source run id -> run id of its copy, for parent tags.
        self._copies: dict[str, str] = {}

    def plan(self, names: Sequence[str]) -> list[tuple[Experiment, list[Run]]]:
        """
        Return the source experiments to copy, each with its active runs.

        Args:
            names: Experiment names to copy; every active one when empty.

        Raises:
            MlflowException: If a named experiment is not in the source.
        """
        experiments = _pages(
            lambda token: self.source.search_experiments(
                view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token
            )
        )
        if names:
            by_name = {e.name: e for e in experiments}
            unknown = [name for name in names if name not in by_name]
            if unknown:
                raise MlflowException(
                    f"No active experiment named {', '.join(unknown)} in the source. "
                    "Check the names with the source's UI or search_experiments().",
                    RESOURCE_DOES_NOT_EXIST,
                )
            experiments = [by_name[name] for name in dict.fromkeys(names)]
        plan = [(e, self._source_runs(e.experiment_id)) for e in experiments]
        # MLflow's stores create "Default" by themselves; an empty one is noise.
        return [(e, runs) for e, runs in plan if runs or e.experiment_id != "0"]

    def _source_runs(self, experiment_id: str) -> list[Run]:
        return _pages(
            lambda token: self.source.search_runs(
                [experiment_id],
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=_PAGE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
        )

    def copy_experiment(
        self, experiment: Experiment, runs: list[Run], advance: Callable[[int], None]
    ) -> None:
        """
        Copy one experiment's runs, calling `advance(1)` after each.

        Raises:
            MlflowException: If the destination refuses a write, or holds a
                deleted experiment of the same name.
        """
        target = self._target_experiment(experiment)
        existing = _pages(
            lambda token: self.dest.search_runs(
                [target],
                run_view_type=ViewType.ALL,
                max_results=_PAGE,
                page_token=token,
            )
        )
        copies = _copies_by_source(existing)
        self._copies.update((k, v.info.run_id) for k, v in copies.items())
        originals = {run.info.run_id for run in existing}
        for run in _parents_first(runs):
            self._copy_run(run, target, copies.get(run.info.run_id), originals)
            advance(1)

    def _target_experiment(self, experiment: Experiment) -> str:
        found = self.dest.get_experiment_by_name(experiment.name)
        if found is None:
            return self.dest.create_experiment(experiment.name, tags=experiment.tags)
        if found.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException.invalid_parameter_value(
                f"Experiment {experiment.name!r} is deleted in the destination. "
                "Restore it (MlflowClient.restore_experiment) or delete it for good."
            )
        return found.experiment_id

    def _copy_run(
        self, run: Run, target: str, copy: Run | None, originals: set[str]
    ) -> None:
        origin = run.data.tags.get(SOURCE_RUN_TAG)
        if origin in originals:
            self._copies[run.info.run_id] = origin
            self.tally.present += 1
        elif copy is None:
            self._fill(run, self._create(run, target), resuming=False)
            self.tally.copied += 1
        elif _is_done(copy):
            self.tally.present += 1
        else:
            self._fill(run, copy, resuming=True)
            if _is_running(run):
                self.tally.running += 1
            else:
                self.tally.resumed += 1

    def _create(self, run: Run, target: str) -> Run:
        tags = self._tags_for(run)
        created = self.dest.create_run(
            target,
            start_time=run.info.start_time,
            tags={key: tags[key] for key in _CREATE_TAGS if key in tags},
            run_name=run.info.run_name,
        )
        self._copies[run.info.run_id] = created.info.run_id
        return created

    def _tags_for(self, run: Run) -> dict[str, str]:
        tags = {
            key: value
            for key, value in run.data.tags.items()
            if not key.startswith(TAG_PREFIX) and key != MLFLOW_RUN_NAME
        }
        parent = tags.get(MLFLOW_PARENT_RUN_ID)
        if parent in self._copies:
            tags[MLFLOW_PARENT_RUN_ID] = self._copies[parent]
        tags[SOURCE_RUN_TAG] = run.info.run_id
        tags[SOURCE_URI_TAG] = self.source_label
        return tags

    def _fill(self, run: Run, copy: Run, *, resuming: bool) -> None:
        run_id = copy.info.run_id
        params = [
            Param(key, value)
            for key, value in run.data.params.items()
            if key not in copy.data.params
        ]
        tags = [
            RunTag(key, value)
            for key, value in self._tags_for(run).items()
            if copy.data.tags.get(key) != value
        ]
        for chunk in _chunks(params, PARAMS_PER_BATCH):
            self.dest.log_batch(run_id, params=chunk)
        for chunk in _chunks(tags, TAGS_PER_BATCH):
            self.dest.log_batch(run_id, tags=chunk)
        self._copy_metrics(run, run_id, resuming)
        if _is_running(run):
            return
        self.dest.set_terminated(run_id, run.info.status, run.info.end_time)
        self.dest.set_tag(run_id, COMPLETE_TAG, "true")

    def _copy_metrics(self, run: Run, run_id: str, resuming: bool) -> None:
        pending: list[Metric] = []
        for key in sorted(run.data.metrics):
            history = self.source.get_metric_history(run.info.run_id, key)
            if resuming:
                history = _missing(history, self.dest.get_metric_history(run_id, key))
            pending += [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
            while len(pending) >= METRICS_PER_BATCH:
                self.dest.log_batch(run_id, metrics=pending[:METRICS_PER_BATCH])
                del pending[:METRICS_PER_BATCH]
        if pending:
            self.dest.log_batch(run_id, metrics=pending)


def _pages(search: Callable[[str | None], PagedList[T]]) -> list[T]:
    """Return every item of a paged MLflow search."""
    items: list[T] = []
    token = None
    while True:
        page = search(token)
        items += page
        token = page.token
        if not token:
            return items


def _copies_by_source(runs: list[Run]) -> dict[str, Run]:
    """Map source run ids to their copies, preferring complete ones."""
    copies: dict[str, Run] = {}
    for run in sorted(runs, key=_is_done):
        source = run.data.tags.get(SOURCE_RUN_TAG)
        if source:
            copies[source] = run
    return copies


def _is_done(copy: Run) -> bool:
    """Whether a copy needs no more work: complete, or deleted by the user."""
    deleted = copy.info.lifecycle_stage != LifecycleStage.ACTIVE
    return deleted or copy.data.tags.get(COMPLETE_TAG) == "true"


def _is_running(run: Run) -> bool:
    return run.info.status == RunStatus.to_string(RunStatus.RUNNING)


def _parents_first(runs: list[Run]) -> list[Run]:
    """Order runs so that a parent comes before its nested runs."""
    by_id = {run.info.run_id: run for run in runs}
    ordered: list[Run] = []
    seen: set[str] = set()
    for run in runs:
        chain: list[Run] = []
        current: Run | None = run
        while current is not None and current.info.run_id not in seen:
            seen.add(current.info.run_id)
            chain.append(current)
            current = by_id.get(current.data.tags.get(MLFLOW_PARENT_RUN_ID, ""))
        ordered += reversed(chain)
    return ordered


def _point(metric: Metric) -> tuple[int, int, str]:
    # repr, not the float: NaN never equals itself.
    return (metric.step, metric.timestamp, repr(float(metric.value)))


def _missing(source: list[Metric], copied: list[Metric]) -> list[Metric]:
    """Return the source points that the copy lacks, counting duplicates."""
    have = Counter(_point(m) for m in copied)
    missing = []
    for metric in source:
        point = _point(metric)
        if have[point]:
            have[point] -= 1
        else:
            missing.append(metric)
    return missing


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _without_password(uri: str) -> str:
    """Drop the credentials of an ``http://user:secret@host`` URI."""
    parsed = urlparse(uri)
    if parsed.password is None and parsed.username is None:
        return uri
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urlunparse(parsed._replace(netloc=netloc))
