"""Medians, ratios and targets: the printed tables and the JSON of raw figures.

The tables are Markdown, so a run's output pastes into `docs/performance.md`
as it is. Every figure comes from this run's samples; nothing is hard-coded
but the targets themselves, which are the issue's.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._backends import Backend

TRACKIO_KEY = "trackio"
# The unit of a target that is a fact rather than a figure (0 = no, 1 = yes).
YES_NO = "yes/no"


@dataclass
class WorkloadResult:
    """The samples of one workload, by backend, in the order they ran."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    backends: list[Backend]
    samples: dict[str, list[float]]
    notes: list[str]
    observations: dict[str, Any]

    def median(self, backend_key: str) -> float | None:
        values = self.samples.get(backend_key)
        return statistics.median(values) if values else None

    def cost_ratio(self, backend_key: str, reference_key: str) -> float | None:
        """Return backend's cost ÷ reference's (time, inverse rate, or MB)."""
        value, reference = self.median(backend_key), self.median(reference_key)
        if value is None or reference is None or 0 in (value, reference):
            return None
        return reference / value if self.higher_is_better else value / reference


Measure = Callable[[dict[str, WorkloadResult]], float | None]


@dataclass(frozen=True)
class Target:
    """One of the issue's goals for `trackio://`, checked against medians."""

    workload: str
    check: str
    comparison: str
    threshold: float
    unit: str
    measure: Measure

    def passed(self, measured: float) -> bool:
        if self.comparison == "<":
            return measured < self.threshold
        if self.comparison == "<=":
            return measured <= self.threshold
        return measured >= self.threshold


def _ratio(workload: str, backend: str, reference: str) -> Measure:
    def measure(results: dict[str, WorkloadResult]) -> float | None:
        return results[workload].cost_ratio(backend, reference)

    return measure


def _median(workload: str, backend: str) -> Measure:
    def measure(results: dict[str, WorkloadResult]) -> float | None:
        return results[workload].median(backend)

    return measure


def _import_cost(results: dict[str, WorkloadResult]) -> float | None:
    result = results["import"]
    loaded, hidden = result.median("entry_point"), result.median("entry_point_hidden")
    if loaded is None or hidden is None:
        return None
    return loaded - hidden


def _trackio_imported(results: dict[str, WorkloadResult]) -> float:
    return float(results["import"].observations["trackio_imported"])


TARGETS = (
    Target(
        "fluent",
        "trackio:// ÷ noop:// time",
        "<=",
        1.3,
        "x",
        _ratio("fluent", "trackio", "noop"),
    ),
    Target(
        "fluent",
        "sqlite:/// ÷ trackio:// time",
        ">=",
        25,
        "x",
        _ratio("fluent", "sqlite", "trackio"),
    ),
    Target(
        "log_batch",
        "trackio:// rate",
        ">=",
        200_000,
        "points/s",
        _median("log_batch", "trackio"),
    ),
    Target(
        "log_batch",
        "trackio:// rate ÷ sqlite3 (bare) rate",
        ">=",
        0.5,
        "x",
        lambda results: _inverse(
            _ratio("log_batch", "trackio", "bare_sqlite")(results)
        ),
    ),
    Target(
        "autolog",
        "trackio:// ÷ noop:// fit time",
        "<=",
        1.05,
        "x",
        _ratio("autolog", "trackio", "noop"),
    ),
    Target("history", "trackio:// time", "<", 0.5, "s", _median("history", "trackio")),
    Target(
        "history",
        "trackio:// ÷ sqlite:/// time",
        "<=",
        1.0,
        "x",
        _ratio("history", "trackio", "sqlite"),
    ),
    Target("search", "trackio:// time", "<", 1.0, "s", _median("search", "trackio")),
    Target(
        "search",
        "trackio:// ÷ sqlite:/// time",
        "<=",
        1.0,
        "x",
        _ratio("search", "trackio", "sqlite"),
    ),
    Target("import", "time the entry point adds", "<=", 30, "ms", _import_cost),
    Target(
        "import",
        "import mlflow imports trackio",
        "<=",
        0,
        YES_NO,
        _trackio_imported,
    ),
    Target(
        "memory",
        "trackio:// peak RSS growth",
        "<=",
        50,
        "MB",
        _median("memory", "trackio"),
    ),
)


def _inverse(value: float | None) -> float | None:
    return None if not value else 1 / value


def format_value(value: float | None, unit: str) -> str:
    """Render a figure with as many digits as its unit deserves."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == YES_NO:
        return "yes" if value else "no"
    if unit == "points/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if unit == "s" and abs(value) < 1:
        return f"{value:.2g}" if abs(value) < 0.01 else f"{value:.3f}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _format_threshold(value: float, unit: str) -> str:
    if unit == YES_NO:
        return "no"
    if unit == "x":
        return f"{value:g}x"
    return f"{value:,g}"


def evaluate_targets(
    results: dict[str, WorkloadResult], judged: bool
) -> list[dict[str, Any]]:
    """Return each target of a workload that ran, measured and judged."""
    rows = []
    for target in TARGETS:
        if target.workload not in results:
            continue
        measured = target.measure(results)
        if measured is None:
            verdict = "no data"
        elif not judged:
            verdict = "not judged"
        else:
            verdict = "PASS" if target.passed(measured) else "FAIL"
        rows.append(
            {
                "workload": target.workload,
                "check": target.check,
                "measured": measured,
                "comparison": target.comparison,
                "threshold": target.threshold,
                "unit": target.unit,
                "result": verdict,
            }
        )
    return rows


def _samples_cell(values: list[float], unit: str) -> str:
    if len(values) <= 5:
        return ", ".join(format_value(v, unit) for v in values)
    low, high = format_value(min(values), unit), format_value(max(values), unit)
    return f"{low} to {high} (n={len(values)})"


def medians_table(results: dict[str, WorkloadResult]) -> str:
    """Return the Markdown table of medians, one row per workload and backend."""
    lines = [
        "| workload | backend | median | unit | ÷ trackio:// | samples |",
        "|---|---|---:|---|---:|---|",
    ]
    for result in results.values():
        for index, backend in enumerate(result.backends):
            ratio = result.cost_ratio(backend.key, TRACKIO_KEY)
            lines.append(
                "| {} | {} | {} | {} | {} | {} |".format(
                    result.title if index == 0 else "",
                    backend.label,
                    format_value(result.median(backend.key), result.unit),
                    result.unit,
                    format_value(ratio, "x"),
                    _samples_cell(result.samples.get(backend.key, []), result.unit),
                )
            )
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    """Return the Markdown table of the targets for `trackio://`."""
    lines = [
        "| workload | check | measured | target | result |",
        "|---|---|---:|---|---|",
    ]
    for row in targets:
        unit = row["unit"]
        threshold = _format_threshold(row["threshold"], unit)
        suffix = "" if unit in ("x", YES_NO) else f" {unit}"
        comparison = "" if unit == YES_NO else f"{row['comparison']} "
        measured = format_value(row["measured"], unit)
        lines.append(
            f"| {row['workload']} | {row['check']} | {measured}{suffix} | "
            f"{comparison}{threshold}{suffix} | {row['result']} |"
        )
    return "\n".join(lines)


def notes_text(results: dict[str, WorkloadResult]) -> str:
    """Return each workload's notes as a Markdown list."""
    lines = []
    for result in results.values():
        lines += [f"- {result.key}: {note}" for note in result.notes]
    lines.append(
        "- ÷ trackio://: the backend's cost divided by trackio://'s (time, the "
        "inverse of a rate, or MB); below 1 means cheaper than trackio://."
    )
    return "\n".join(lines)


def machine_description() -> dict[str, Any]:
    """Describe the machine: CPU, cores, memory, Python and library versions."""
    from importlib import metadata

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read_lines("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = next(
        (
            int(line.split()[1])
            for line in _read_lines("/proc/meminfo")
            if line.startswith("MemTotal:")
        ),
        None,
    )
    versions = {}
    for name in (
        "mlflow",
        "mlflow-skinny",
        "trackio",
        "mlflow-trackio",
        "torch",
        "pytorch-lightning",
        "orjson",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import sqlite3

    return {
        "cpu": cpu,
        "cores": _cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1) if memory_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "versions": versions,
    }


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def write_json(
    directory: Path,
    results: dict[str, WorkloadResult],
    targets: list[dict[str, Any]],
    run: dict[str, Any],
) -> Path:
    """Write every sample, median and target to `<directory>/<timestamp>.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = directory / f"{stamp}.json"
    document = {
        "run": run,
        "machine": machine_description(),
        "workloads": {
            key: {
                "title": result.title,
                "unit": result.unit,
                "higher_is_better": result.higher_is_better,
                "notes": result.notes,
                "observations": result.observations,
                "backends": {
                    backend.key: {
                        "label": backend.label,
                        "samples": result.samples.get(backend.key, []),
                        "median": result.median(backend.key),
                    }
                    for backend in result.backends
                },
            }
            for key, result in results.items()
        },
        "targets": targets,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path
