"""The child side of the memory workload: `python -m benchmarks._child memory`.

Usage: ``python -m benchmarks._child memory <trackio|trackio_api> <points>
<directory>``. Prints one JSON line: the peak resident set before and after
logging, its growth in MB, and the seconds the logging took.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
from pathlib import Path


def _peak_rss_kb() -> int:
    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _log_through_store(points: int, directory: Path) -> tuple[int, float]:
    from mlflow.tracking import MlflowClient

    from benchmarks._workloads import STEPS_PER_BATCH, metric_batch

    client = MlflowClient(f"trackio://{directory.as_posix()}")
    run_id = client.create_run(client.create_experiment("memory")).info.run_id
    client.log_batch(run_id, metrics=metric_batch(0, STEPS_PER_BATCH))
    gc.collect()
    before = _peak_rss_kb()
    started = time.perf_counter()
    steps = points // 5
    for first in range(STEPS_PER_BATCH, STEPS_PER_BATCH + steps, STEPS_PER_BATCH):
        client.log_batch(run_id, metrics=metric_batch(first, STEPS_PER_BATCH))
    return before, time.perf_counter() - started


def _log_through_trackio(points: int, directory: Path) -> tuple[int, float]:
    os.environ["TRACKIO_DIR"] = str(directory)
    import trackio

    from benchmarks._backends import quiet_stdout
    from benchmarks._workloads import step_values

    with quiet_stdout():
        trackio.init(project="memory", auto_log_cpu=False, auto_log_gpu=False)
    trackio.log(step_values(0), step=0)
    gc.collect()
    before = _peak_rss_kb()
    started = time.perf_counter()
    for step in range(1, 1 + points // 5):
        trackio.log(step_values(step), step=step)
    with quiet_stdout():
        trackio.finish()
    return before, time.perf_counter() - started


def main(argv: list[str]) -> None:
    """Run one memory measurement and print its JSON line."""
    task, backend, points, directory = argv
    if task != "memory":
        raise SystemExit(f"Unknown task {task!r}; the only task is 'memory'.")
    log = _log_through_store if backend == "trackio" else _log_through_trackio
    before, seconds = log(int(points), Path(directory))
    after = _peak_rss_kb()
    print(
        json.dumps(
            {
                "before_mb": before / 1024,
                "after_mb": after / 1024,
                "growth_mb": (after - before) / 1024,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
