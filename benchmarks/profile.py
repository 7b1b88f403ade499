"""Profile `trackio://` on one workload: ``python -m benchmarks.profile fluent``.

Runs the workload's timed region once under cProfile, against a fresh
`trackio://` directory, and prints the functions that take the most time with
their share of the total (inclusive and own time). Setup is not profiled.
Sizes default to the benchmark's; cProfile makes Python calls slower, so the
shares are indicative and the benchmark's timings are the ones to quote.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from benchmarks._backends import TRACKIO, Session
from benchmarks._workloads import (
    STEPS_PER_BATCH,
    MetricHistory,
    SearchRuns,
    Sizes,
    metric_batch,
    step_values,
)

_WORKLOADS = ("fluent", "log_batch", "history", "search")


def _fluent(session: Session, size: int) -> Callable[[], None]:
    uri = session.new_store_uri(TRACKIO)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("fluent")
    mlflow.start_run()

    def timed() -> None:
        for step in range(size):
            mlflow.log_metrics(step_values(step), step=step)
        mlflow.end_run()

    return timed


def _log_batch(session: Session, size: int) -> Callable[[], None]:
    client = MlflowClient(session.new_store_uri(TRACKIO))
    run_id = client.create_run(client.create_experiment("batch")).info.run_id
    batches = [metric_batch(c * STEPS_PER_BATCH, STEPS_PER_BATCH) for c in range(size)]

    def timed() -> None:
        for batch in batches:
            client.log_batch(run_id, metrics=batch)

    return timed


def _history(session: Session, size: int) -> Callable[[], None]:
    workload = MetricHistory(Sizes(history_points=size))
    uri, run_id = workload.prepare(TRACKIO, session)
    client = MlflowClient(uri)
    return lambda: client.get_metric_history(run_id, "loss")


def _search(session: Session, size: int) -> Callable[[], None]:
    workload = SearchRuns(Sizes(search_runs=size))
    uri, experiment_id = workload.prepare(TRACKIO, session)
    client = MlflowClient(uri)
    return lambda: client.search_runs([experiment_id], SearchRuns.FILTER)


_SETUPS = {
    "fluent": (_fluent, Sizes().fluent_steps, "steps"),
    "log_batch": (_log_batch, Sizes().batch_calls, "calls of 1,000 metrics"),
    "history": (_history, Sizes().history_points, "points"),
    "search": (_search, Sizes().search_runs, "runs"),
}


def _short(filename: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def print_profile(profile: cProfile.Profile, top: int, sort: str) -> None:
    """Print the `top` functions by `sort` with their share of the total."""
    stats = pstats.Stats(profile)
    total = stats.total_tt
    print(f"total {total:.2f} s under cProfile; sorted by {sort}")
    print(f"{'incl %':>7} {'own %':>6} {'calls':>9}  function")
    rows = []
    for (filename, line, name), (_, calls, own, inclusive, _) in stats.stats.items():
        rows.append((inclusive, own, calls, f"{_short(filename)}:{line}({name})"))
    index = 0 if sort == "cumulative" else 1
    rows.sort(key=lambda row: row[index], reverse=True)
    for inclusive, own, calls, where in rows[:top]:
        print(
            f"{100 * inclusive / total:7.1f} {100 * own / total:6.1f} "
            f"{calls:9,d}  {where}"
        )


def main(argv: list[str] | None = None) -> None:
    """Profile one workload on trackio:// and print the hottest functions."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("workload", choices=_WORKLOADS)
    parser.add_argument("--size", type=int, help="the workload's size")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", choices=("cumulative", "own"), default="cumulative")
    parser.add_argument("--save", type=Path, help="also write the raw pstats here")
    arguments = parser.parse_args(argv)
    setup, default_size, what = _SETUPS[arguments.workload]
    size = arguments.size or default_size
    warnings.simplefilter("ignore")
    session = Session()
    original_directory = Path.cwd()
    os.chdir(session.root)
    try:
        timed = setup(session, size)
        profile = cProfile.Profile()
        profile.runcall(timed)
    finally:
        os.chdir(original_directory)
        session.close()
    print(f"trackio:// {arguments.workload}, {size:,} {what}")
    print_profile(profile, arguments.top, arguments.sort)
    if arguments.save:
        profile.dump_stats(arguments.save)


if __name__ == "__main__":
    main(sys.argv[1:])
