"""Hostile and odd input: TrackioStore must answer it as MLflow's sqlite store.

Each case drives MLflow's own ``sqlite:///`` store and then a TrackioStore,
at the store level (as MLflow's server does with what a client sent), and
compares every outcome through tests/differential.py: both stores raise an
``MlflowException`` with the same error code, or both read back the same
value. While the TrackioStore runs, nothing may be written outside its
Trackio directory, whatever the names look like. The differences that are
explained (Trackio cannot store it) are asserted on their own below and
listed under "Bad input" in docs/conformance.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from tests import test_conformance as conformance
from tests.differential import (
    SQLITE,
    TRACKIO,
    Normaliser,
    Places,
    Recorder,
    artifact_roots,
    assert_same,
    close_store,
    sqlite_store,
    trackio_store,
)

# The differential fixtures: a fresh sqlite database and Trackio directory.
sqlite_template = conformance.sqlite_template
places = conformance.places
MERGE_REFUSED = conformance.MERGE_REFUSED

Workload = Callable[[Any, Recorder], None]

HOSTILE_KEYS = {
    "dots": "a..b",
    "only-dots": "..",
    "parent": "../../escape",
    "slash": "a/b",
    "leading-slash": "/etc/passwd",
    "trailing-slash": "a/",
    "double-slash": "a//b",
    "spaces": "with space",
    "padded": " padded ",
    "unicode": "Ünïcödé_损失",
    "emoji": "loss 🔥",
    "reserved-step": "step",
    "reserved-escape": "__step",
    "at-limit": "k" * MAX_ENTITY_KEY_LENGTH,
    "over-limit": "k" * (MAX_ENTITY_KEY_LENGTH + 1),
    "very-long": "k" * 1000,
    "empty": "",
}

METRIC_VALUES: dict[str, Any] = {
    "string": "abc",
    "numeric-string": "1.5",
    "none": None,
    "bool": True,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "1e308": 1e308,
    "-1e308": -1e308,
    "max-float": 1.7976931348623157e308,
    "tiny": 5e-324,
    "-0.0": -0.0,
    "big-int": 2**53 + 1,
}

TIMESTAMPS = {
    "zero": 0,
    "negative": -1,
    "last-of-year-9999": 253_402_300_799_999,
    "over-int64": 2**63,
}

# Past the year 9999, e.g. nanoseconds passed for milliseconds.
LATE_TIMESTAMPS = {
    "first-of-year-10000": 253_402_300_800_000,
    "nanoseconds": 1_700_000_000_000_000_000,
    "int64-max": 2**63 - 1,
}

REFUSED = {"error": "MlflowException", "code": "INVALID_PARAMETER_VALUE"}
INTERNAL_ERROR = {"error": "MlflowException", "code": "INTERNAL_ERROR"}

STEPS = {
    "negative": -1,
    "very-negative": -(2**62),
    "int64-min": -(2**63),
    "int64-max": 2**63 - 1,
    "over-int64": 2**63,
    "float": 1.5,
    "string": "3",
}

PARAM_VALUES = {
    "empty": "",
    "at-limit": "v" * MAX_PARAM_VAL_LENGTH,
    "over-limit": "v" * (MAX_PARAM_VAL_LENGTH + 1),
    "far-over-limit": "v" * 100_000,
    "unicode-at-limit": "ü" * MAX_PARAM_VAL_LENGTH,
    "newlines": "a\nb\r\nc",
    "nul": "a\x00b",
    "quotes": 'it\'s "quoted"',
}

EXPERIMENT_NAMES = {
    "empty": "",
    "space": " ",
    "punctuation": "!!!",
    "dots": "..",
    "parent": "../../x",
    "absolute": "/etc/passwd",
    "nested": "a/b",
    "backslash": "..\\..\\x",
    "unicode": "实验 ü",
    "nul": "a\x00b",
    "newline": "a\nb",
    "at-limit": "e" * 500,
    "over-limit": "e" * 501,
    "default-lower": "default",
}

RUN_NAMES = {
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "both-quotes": 'it\'s "both"',
    "sql-injection": "x' OR '1'='1",
    "backtick": "a`b",
    "percent": "100%",
}


@dataclass(frozen=True)
class Case:
    """
    One workload, the strings in it that could end up as file names, and what
    TrackioStore answers where it legitimately differs from sqlite (observation
    name to TrackioStore's recorded outcome; docs/conformance.md says why).
    """

    workload: Workload
    hostile: tuple[str, ...] = ()
    explained: tuple[tuple[str, Any], ...] = ()


def _run(store: Any, rec: Recorder, name: str = "run") -> str | None:
    run = rec.observe(
        f"create run {name!r}",
        lambda: store.create_run("0", "user", 1000, [], name),
        new="run",
    )
    return None if run is None else run.info.run_id


def _read_run(store: Any, rec: Recorder, run_id: str) -> None:
    rec.observe("get run", lambda: store.get_run(run_id))


def _history(store: Any, rec: Recorder, run_id: str, key: str) -> None:
    found = rec.observe(
        f"history {key!r}", lambda: store.get_metric_history(run_id, key)
    )
    # The normaliser compares -0.0 and 0.0 as equal; the sign must match too.
    rec.observe(f"signs {key!r}", lambda: _signs(found or []))


def _signs(metrics: Any) -> list[float]:
    return [math.copysign(1.0, m.value) for m in metrics]


def metric_key_case(key: str) -> Case:
    """Log a metric under `key`, alone and in a batch, and read it back."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe(
            "log metric", lambda: store.log_metric(run_id, Metric(key, 1, 5, 0))
        )
        rec.observe(
            "log batch",
            lambda: store.log_batch(run_id, [Metric(key, 2.0, 6, 1)], [], []),
        )
        _history(store, rec, run_id, key)
        _read_run(store, rec, run_id)

    return Case(workload, (key,))


def param_key_case(key: str) -> Case:
    """Log a param under `key`, alone and in a batch, and read it back."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe("log param", lambda: store.log_param(run_id, Param(key, "v")))
        rec.observe(
            "log batch", lambda: store.log_batch(run_id, [], [Param(key, "v")], [])
        )
        _read_run(store, rec, run_id)

    return Case(workload, (key,))


def metric_value_case(value: Any, explained: tuple = ()) -> Case:
    """Log `value` as a metric, alone and in a batch, and read it back."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe(
            "log metric", lambda: store.log_metric(run_id, Metric("m", value, 5, 0))
        )
        rec.observe(
            "log batch",
            lambda: store.log_batch(run_id, [Metric("b", value, 5, 0)], [], []),
        )
        for key in ("m", "b"):
            _history(store, rec, run_id, key)
        run = rec.observe("get run", lambda: store.get_run(run_id))
        latest = run.data._metric_objs if run else []
        rec.observe("latest signs", lambda: _signs(latest))

    return Case(workload, explained=explained)


def step_case(step: Any) -> Case:
    """Log a metric at `step`, alone and in a batch, and read it back."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe(
            "log metric", lambda: store.log_metric(run_id, Metric("m", 1.0, 5, step))
        )
        rec.observe(
            "log batch",
            lambda: store.log_batch(run_id, [Metric("b", 2.0, 5, step)], [], []),
        )
        for key in ("m", "b"):
            _history(store, rec, run_id, key)
        _read_run(store, rec, run_id)

    return Case(workload)


def timestamp_case(timestamp: Any, explained: tuple = ()) -> Case:
    """Log a metric at `timestamp`, alone and in a batch, and read it back."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe(
            "log metric",
            lambda: store.log_metric(run_id, Metric("m", 1.0, timestamp, 0)),
        )
        rec.observe(
            "log batch",
            lambda: store.log_batch(run_id, [Metric("m", 2.0, timestamp, 1)], [], []),
        )
        rec.observe("history", lambda: store.get_metric_history(run_id, "m"))

    return Case(workload, explained=explained)


def param_value_case(value: str) -> Case:
    """Log `value` as a param, alone and in a batch, then log it again."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe("log param", lambda: store.log_param(run_id, Param("p", value)))
        rec.observe(
            "log batch", lambda: store.log_batch(run_id, [], [Param("b", value)], [])
        )
        rec.observe("log again", lambda: store.log_param(run_id, Param("p", value)))
        _read_run(store, rec, run_id)

    return Case(workload)


def param_relog_case() -> Case:
    """Re-log params with the same and with another value, alone and in batches."""

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec)
        rec.observe("first", lambda: store.log_param(run_id, Param("lr", "0.1")))
        rec.observe("same", lambda: store.log_param(run_id, Param("lr", "0.1")))
        rec.observe("other", lambda: store.log_param(run_id, Param("lr", "0.2")))
        rec.observe(
            "other in batch",
            lambda: store.log_batch(
                run_id, [], [Param("new", "1"), Param("lr", "0.3")], []
            ),
        )
        rec.observe(
            "duplicate keys in one batch",
            lambda: store.log_batch(
                run_id, [], [Param("dup", "1"), Param("dup", "2")], []
            ),
        )
        rec.observe(
            "same key and value twice in one batch",
            lambda: store.log_batch(
                run_id, [], [Param("twice", "1"), Param("twice", "1")], []
            ),
        )
        rec.observe("other type", lambda: store.log_param(run_id, Param("lr", 0.1)))
        _read_run(store, rec, run_id)

    return Case(workload)


def experiment_name_case(name: str) -> Case:
    """Create an experiment named `name`, twice, and find it by name."""

    def workload(store: Any, rec: Recorder) -> None:
        rec.observe("create", lambda: store.create_experiment(name), new="exp")
        rec.observe("create again", lambda: store.create_experiment(name))
        rec.observe("by name", lambda: store.get_experiment_by_name(name))
        rec.observe(
            "search",
            lambda: store.search_experiments(ViewType.ALL, order_by=["name"]),
        )
        experiment = store.get_experiment_by_name(name)
        if experiment is not None:
            rec.observe(
                "run in it",
                lambda: store.create_run(
                    experiment.experiment_id, "user", 1000, [], "r"
                ),
                new="run",
            )

    return Case(workload, (name,))


def distinct_names_case(first: str, second: str) -> Case:
    """Two experiment names whose Trackio projects differ are both kept."""

    def workload(store: Any, rec: Recorder) -> None:
        for name in (first, second):
            rec.observe(
                f"create {name!r}", lambda n=name: store.create_experiment(n), "exp"
            )
        for name in (first, second):
            rec.observe(
                f"by name {name!r}", lambda n=name: store.get_experiment_by_name(n)
            )

    return Case(workload, (first, second))


def run_name_case(name: str) -> Case:
    """Create a run named `name` beside another, then search for it by name."""
    quoted = [f"'{name}'", f'"{name}"', "'" + name.replace("'", "''") + "'"]
    filters = dict.fromkeys(
        [
            *(f"attributes.run_name = {q}" for q in quoted),
            *(f"tags.`mlflow.runName` = {q}" for q in quoted),
            *(f"attributes.run_name LIKE {q}" for q in quoted),
        ]
    )

    def workload(store: Any, rec: Recorder) -> None:
        run_id = _run(store, rec, name)
        _run(store, rec, "other")
        rec.observe(
            "rename",
            lambda: store.update_run_info(run_id, None, None, name + " again"),
        )
        rec.observe(
            "rename back", lambda: store.update_run_info(run_id, None, None, name)
        )
        for text in filters:
            rec.observe(
                f"search {text}",
                lambda t=text: store.search_runs(["0"], t, ViewType.ALL),
            )

    return Case(workload, (name,))


CASES: dict[str, Case] = {
    **{f"metric-key-{i}": metric_key_case(k) for i, k in HOSTILE_KEYS.items()},
    **{f"param-key-{i}": param_key_case(k) for i, k in HOSTILE_KEYS.items()},
    **{f"metric-value-{i}": metric_value_case(v) for i, v in METRIC_VALUES.items()},
    # sqlite's log_metric lets Python's OverflowError escape; its log_batch and
    # TrackioStore's both raise INTERNAL_ERROR.
    "metric-value-huge-int": metric_value_case(
        10**400, (("log metric", INTERNAL_ERROR),)
    ),
    **{f"timestamp-{i}": timestamp_case(t) for i, t in TIMESTAMPS.items()},
    # Trackio keeps metric times as dates, which end with the year 9999.
    **{
        f"timestamp-{i}": timestamp_case(
            t,
            (
                ("log metric", REFUSED),
                ("log batch", REFUSED),
                ("history", {"items": [], "more": False}),
            ),
        )
        for i, t in LATE_TIMESTAMPS.items()
    },
    # sqlite keeps 1.5 in its integer column; Trackio's dates hold whole ms.
    "timestamp-float": timestamp_case(
        1.5,
        (
            (
                "history",
                {
                    "items": [["m", 1.0, 1, 0, None], ["m", 2.0, 1, 1, None]],
                    "more": False,
                },
            ),
        ),
    ),
    **{f"step-{i}": step_case(s) for i, s in STEPS.items()},
    **{f"param-value-{i}": param_value_case(v) for i, v in PARAM_VALUES.items()},
    "param-relog": param_relog_case(),
    **{f"experiment-{i}": experiment_name_case(n) for i, n in EXPERIMENT_NAMES.items()},
    "experiment-a-b-vs-a_b": distinct_names_case("a-b", "a_b"),
    "experiment-!!!-vs-???": distinct_names_case("!!!", "???"),
    "experiment-case": distinct_names_case("Case", "case"),
    **{f"run-name-{i}": run_name_case(n) for i, n in RUN_NAMES.items()},
}


# Writing outside the Trackio directory -----------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root`, with its size and mtime."""
    found = {}
    for path in [root, *root.rglob("*")]:
        try:
            stat = path.lstat()
        except FileNotFoundError:
            continue
        found[path.as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


def _hostile_paths(trackio_dir: Path, names: tuple[str, ...]) -> list[Path]:
    """Where a name would land if it were used as a path, outside `trackio_dir`."""
    bases = [trackio_dir, *trackio_dir.parents, Path.cwd()]
    found = []
    for name in names:
        for base in bases:
            for variant in {name, name.strip(), name.replace("\\", "/")}:
                if not variant or "\x00" in variant:
                    continue
                try:
                    path = (base / variant).resolve()
                except (OSError, ValueError):
                    continue
                if not path.is_relative_to(trackio_dir):
                    found.append(path)
    return found


def _probe(paths: list[Path]) -> dict[Path, tuple[int, int] | None]:
    """Size and mtime of each path; a directory counts only by being there."""
    found: dict[Path, tuple[int, int] | None] = {}
    for path in paths:
        try:
            stat = path.lstat()
        except (OSError, ValueError):
            found[path] = None
            continue
        # Other processes change shared directories such as /tmp.
        is_dir = path.is_dir() and not path.is_symlink()
        found[path] = (0, 0) if is_dir else (stat.st_size, stat.st_mtime_ns)
    return found


@contextmanager
def writes_only_inside(watched: Path, trackio_dir: Path, names: tuple[str, ...]):
    """Fail if anything under `watched`, or named like `names`, changes outside."""
    before, paths = _tree(watched), _hostile_paths(trackio_dir, names)
    probed = _probe(paths)
    yield
    after = _tree(watched)
    inside = trackio_dir.as_posix() + "/"
    changed = [
        path
        for path, seen in after.items()
        if before.get(path) != seen
        and not path.startswith(inside)
        and path != trackio_dir.as_posix()
    ]
    assert not changed, f"TrackioStore wrote outside its directory: {changed}"
    touched = [path for path, seen in _probe(paths).items() if probed[path] != seen]
    assert not touched, f"TrackioStore touched paths named after input: {touched}"


def run_case(places: Places, case: Case) -> tuple[Recorder, Recorder]:
    """Run `case` against sqlite, then against Trackio while watching the disk."""
    recorders = {}
    for kind, build in ((SQLITE, sqlite_store), (TRACKIO, trackio_store)):
        recorder = Recorder(Normaliser(artifact_roots(places, kind)))
        guard = (
            writes_only_inside(places.root, places.trackio_dir, case.hostile)
            if kind == TRACKIO
            else _nothing()
        )
        with guard:
            store = build(places)
            try:
                case.workload(store, recorder)
            finally:
                close_store(store)
        recorders[kind] = recorder
    return recorders[SQLITE], recorders[TRACKIO]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class TestBadInput:
    @pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
    def test_answers_as_sqlite_does(self, places: Places, case: Case) -> None:
        """Hostile input raises the same error code or reads back the same value."""
        sqlite, trackio = run_case(places, case)
        explained = dict(case.explained)
        assert list(sqlite.outcomes) == list(trackio.outcomes), "different workloads"
        compared = [name for name in sqlite.outcomes if name not in explained]
        assert_same(sqlite, trackio, compared)
        for name, ours in explained.items():
            assert trackio.outcomes[name] == ours, trackio.messages.get(name)
            assert sqlite.outcomes[name] != ours, f"{name}: no longer a difference"

    @pytest.mark.parametrize("truncate", ["true", "false"])
    def test_long_param_values_follow_truncation_setting(
        self, places: Places, monkeypatch: pytest.MonkeyPatch, truncate: str
    ) -> None:
        """Over-long param values are truncated or refused as MLflow is told to."""
        monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", truncate)
        sqlite, trackio = run_case(
            places, param_value_case("v" * (MAX_PARAM_VAL_LENGTH + 1))
        )
        assert_same(sqlite, trackio)
        outcome = trackio.outcomes["log param"]
        if truncate == "true":
            params = trackio.outcomes["get run"]["data"]["params"]
            assert params["p"] == "v" * MAX_PARAM_VAL_LENGTH
        else:
            assert outcome["code"] == "INVALID_PARAMETER_VALUE"


class TestExplainedDifferences:
    """Input Trackio cannot store as sqlite does; see docs/conformance.md."""

    @pytest.mark.parametrize(
        ("first", "second"),
        [("a b", "ab"), ("my.model", "mymodel"), ("a/b", "ab"), ("x!", "x?")],
        ids=["space", "dot", "slash", "punctuation"],
    )
    def test_names_sharing_a_project_are_refused(
        self, places: Places, first: str, second: str
    ) -> None:
        """A name that Trackio would store in a taken project file is refused.

        MLflow's sqlite store accepts both names; Trackio keeps only letters,
        digits, '-' and '_' in a project's file name, so the second name would
        merge into the first experiment's project. TrackioStore refuses it with
        INVALID_PARAMETER_VALUE (our documented behaviour, not sqlite's).
        """
        reference = sqlite_store(places)
        try:
            assert reference.create_experiment(first) != reference.create_experiment(
                second
            )
        finally:
            close_store(reference)
        with writes_only_inside(places.root, places.trackio_dir, (first, second)):
            store = trackio_store(places)
            try:
                kept = store.create_experiment(first)
                with pytest.raises(MlflowException, match=MERGE_REFUSED) as refused:
                    store.create_experiment(second)
                assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
                assert store.get_experiment_by_name(second) is None
                assert store.get_experiment_by_name(first).experiment_id == kept
            finally:
                close_store(store)

    @pytest.mark.parametrize("name", ["registry-models", "model_system", "x_configs"])
    def test_names_trackio_reserves_are_refused(self, places: Places, name: str):
        """Project names Trackio reserves for its own files are refused."""
        reference = sqlite_store(places)
        try:
            assert reference.create_experiment(name)
        finally:
            close_store(reference)
        with writes_only_inside(places.root, places.trackio_dir, (name,)):
            store = trackio_store(places)
            try:
                with pytest.raises(MlflowException, match="is not allowed") as refused:
                    store.create_experiment(name)
                assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
            finally:
                close_store(store)


class TestDiskGuard:
    def test_catches_a_write_beside_the_trackio_directory(self, places: Places) -> None:
        """A file written outside the Trackio directory fails the guard."""
        guard = writes_only_inside(places.root, places.trackio_dir, ())
        with pytest.raises(AssertionError, match="wrote outside"), guard:
            (places.root / "stray.db").write_text("x")

    def test_catches_a_file_named_after_the_input(self, places: Places) -> None:
        """A path built from a hostile name, above the directory, fails the guard."""
        guard = writes_only_inside(places.trackio_dir, places.trackio_dir, ("../x",))
        with pytest.raises(AssertionError, match="named after input"), guard:
            (places.root / "x").write_text("x")
