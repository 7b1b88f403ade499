"""Run every workload against every backend: ``python -m benchmarks``.

Backends alternate within each repetition (the order rotates every
repetition), each workload's medians and ratios are printed as Markdown
tables, and the raw figures go to ``benchmarks/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._backends import Session, rotated
from benchmarks._report import (
    WorkloadResult,
    evaluate_targets,
    format_value,
    medians_table,
    notes_text,
    targets_table,
    write_json,
)

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"
WORKLOAD_KEYS = (
    "import",
    "fluent",
    "log_batch",
    "history",
    "search",
    "autolog",
    "memory",
    "remote",
)
_DEFAULT_REPETITIONS = 3


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark trackio:// side by side with MLflow's own stores.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and one repetition, targets not judged (a smoke test)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every workload's size (default 1: the issue's sizes)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help=f"repetitions per backend (default {_DEFAULT_REPETITIONS}; 1 quick)",
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOAD_KEYS),
        help="comma-separated workloads to run (default: all of "
        f"{','.join(WORKLOAD_KEYS)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIRECTORY,
        help="directory for the JSON of raw figures (default benchmarks/results)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a judged target fails",
    )
    arguments = parser.parse_args(argv)
    unknown = set(arguments.only.split(",")) - set(WORKLOAD_KEYS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; pick from {WORKLOAD_KEYS}")
    return arguments


def _build_workloads(sizes, selected: set[str]) -> list:
    from benchmarks._autolog_fit import AutologLightningFit
    from benchmarks._processes import ImportMlflow, MemoryWhileLogging
    from benchmarks._remote import RemoteLogBatch
    from benchmarks._workloads import (
        ClientLogBatch,
        FluentLogMetrics,
        MetricHistory,
        SearchRuns,
    )

    kinds = {
        "import": ImportMlflow,
        "fluent": FluentLogMetrics,
        "log_batch": ClientLogBatch,
        "history": MetricHistory,
        "search": SearchRuns,
        "autolog": AutologLightningFit,
        "memory": MemoryWhileLogging,
        "remote": RemoteLogBatch,
    }
    return [kinds[key](sizes) for key in WORKLOAD_KEYS if key in selected]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_workload(workload, session: Session, repetitions: int) -> WorkloadResult:
    """Measure one workload on each of its backends, alternating them."""
    repetitions = workload.repetitions or repetitions
    samples: dict[str, list[float]] = {b.key: [] for b in workload.backends}
    prepared = {}
    started = time.perf_counter()
    # What `prepare` made (servers, stores) is released even when a
    # repetition fails, each backend's in turn whatever the others raise.
    with contextlib.ExitStack() as releases:
        for backend in workload.backends:
            prepared[backend.key] = workload.prepare(backend, session)
            releases.callback(workload.release, backend, session, prepared[backend.key])
        if any(value is not None for value in prepared.values()):
            elapsed = time.perf_counter() - started
            _progress(f"[{workload.key}] set up in {elapsed:.1f} s")
        for repetition in range(repetitions):
            for backend in rotated(workload.backends, repetition):
                value = workload.measure(backend, session, prepared[backend.key])
                samples[backend.key].append(value)
                _progress(
                    f"[{workload.key}] {repetition + 1}/{repetitions} "
                    f"{backend.label}: {format_value(value, workload.unit)} "
                    f"{workload.unit}"
                )
    _progress(f"[{workload.key}] done in {time.perf_counter() - started:.1f} s")
    for backend, values in workload.side_samples.items():
        samples[backend.key] = values
    return WorkloadResult(
        key=workload.key,
        title=workload.title,
        unit=workload.unit,
        higher_is_better=workload.higher_is_better,
        backends=[*workload.backends, *workload.side_samples],
        samples=samples,
        notes=workload.notes,
        observations=workload.observations,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the tables, write the JSON; return the exit status."""
    arguments = _parse_arguments(argv)
    from benchmarks._workloads import Sizes

    sizes = Sizes.quick() if arguments.quick else Sizes().scaled(arguments.scale)
    repetitions = arguments.repetitions or (
        1 if arguments.quick else _DEFAULT_REPETITIONS
    )
    output = arguments.output.resolve()
    _silence_libraries()
    session = Session()
    original_directory = Path.cwd()
    # MLflow's stores put artifacts under ./mlruns by default; keep them in
    # the session's directory rather than wherever the benchmark was started.
    os.chdir(session.root)
    began = datetime.now(timezone.utc)
    clock = time.perf_counter()
    results = {}
    try:
        for workload in _build_workloads(sizes, set(arguments.only.split(","))):
            results[workload.key] = run_workload(workload, session, repetitions)
    finally:
        os.chdir(original_directory)
        session.close()
    duration = time.perf_counter() - clock
    targets = evaluate_targets(results, judged=not arguments.quick)
    header = (
        f"## Benchmark: {'quick' if arguments.quick else 'full'} run, scale "
        f"{arguments.scale:g}, {repetitions} repetitions (medians), "
        f"{duration:.0f} s"
    )
    print("\n".join([header, "", medians_table(results), "", notes_text(results)]))
    print("\n### Targets for trackio://\n")
    print(targets_table(targets))
    path = write_json(
        output,
        results,
        targets,
        {
            "command": ["python", "-m", "benchmarks", *(argv or sys.argv[1:])],
            "quick": arguments.quick,
            "scale": arguments.scale,
            "repetitions": repetitions,
            "sizes": vars(sizes),
            "started": began.isoformat(),
            "duration_s": duration,
        },
    )
    print(f"\nRaw figures: {path}")
    failed = any(row["result"] == "FAIL" for row in targets)
    return 1 if arguments.check and failed else 0


def _silence_libraries() -> None:
    import logging

    warnings.simplefilter("ignore")
    for name in ("mlflow", "alembic", "trackio", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
