"""Pure translation between MLflow's tracking entities and Trackio's records.

Nothing here does I/O or imports Trackio; the local backend and the store
call these functions on both the write and the read path, so the mapping
table in ``docs/mapping.md`` is implemented in this module and nowhere else.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from mlflow.entities import Experiment, LifecycleStage

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)

# Trackio renames these metric keys (and any key starting with "__") when its
# own `Run.log` writes them, by prefixing "__", because its readers overwrite
# them with row columns (trackio.utils.RESERVED_KEYS in Trackio 0.43).
TRACKIO_RESERVED_KEYS = frozenset(
    {"project", "run", "timestamp", "step", "time", "metrics"}
)
_ESCAPE = "__"

# MLflow's system-metrics monitor logs keys with this prefix; Trackio keeps
# machine metrics in its own table, shown on the dashboard's System tab.
SYSTEM_METRIC_PREFIX = "system/"

DEFAULT_EXPERIMENT_ID = "0"
DEFAULT_EXPERIMENT_NAME = "Default"

# Trackio's config keys for the dashboard's Username / Created / Group columns.
CONFIG_USER = "_Username"
CONFIG_CREATED = "_Created"
CONFIG_GROUP = "_Group"
TRACKIO_CONFIG_KEYS = frozenset({CONFIG_USER, CONFIG_CREATED, CONFIG_GROUP})

# MLflow's SQL store cannot hold infinities and stores the largest finite
# double instead; MLflow reads from this store do the same.
_FLOAT_MAX = sys.float_info.max

# Trackio keeps a metric's time as ISO-8601 text, and Python's dates end with
# year 9999; MLflow's SQL store takes any 64-bit timestamp.
MAX_TIMESTAMP_MS = 253_402_300_799_999

# File names hold at most 255 bytes, and Trackio appends up to 36 characters
# to a project's name ("_external_run_artifact_links.parquet" in Trackio 0.43).
MAX_PROJECT_NAME_BYTES = 200


class MetricPoint(NamedTuple):
    """One MLflow metric value as it is read back."""

    key: str
    value: float
    timestamp: int
    step: int


def ms_to_iso(timestamp_ms: int) -> str:
    """Return Trackio's ISO-8601 UTC text for a millisecond epoch timestamp."""
    return (_EPOCH + timestamp_ms * _ONE_MS).isoformat()


def iso_to_ms(text: str) -> int:
    """Return the millisecond epoch timestamp of Trackio's ISO-8601 text."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _ONE_MS


def to_trackio_key(key: str) -> str:
    """Escape an MLflow metric key the way Trackio escapes reserved keys."""
    if key in TRACKIO_RESERVED_KEYS or key.startswith(_ESCAPE):
        return _ESCAPE + key
    return key


def from_trackio_key(key: str) -> str:
    """Undo `to_trackio_key`; keys Trackio never escapes come back unchanged."""
    if key.startswith(_ESCAPE):
        original = key[len(_ESCAPE) :]
        if original in TRACKIO_RESERVED_KEYS or original.startswith(_ESCAPE):
            return original
    return key


def to_trackio_value(value: float) -> float | str:
    """Encode a metric value as Trackio stores it (non-finite values as text)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    # Adding 0.0 turns -0.0 into 0.0, as MLflow's SQL store reads it back.
    return float(value) + 0.0


def from_trackio_value(raw: Any) -> float | None:
    """Decode a value Trackio stored into what MLflow's SQL store returns.

    Returns None for values that are not numbers (Trackio also stores media,
    tables and text under metric keys), which MLflow cannot represent.
    """
    if isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, int | float):
        value = float(raw)
    elif raw == "NaN":
        return math.nan
    elif raw == "Infinity":
        value = math.inf
    elif raw == "-Infinity":
        value = -math.inf
    else:
        return None
    if math.isinf(value):
        return math.copysign(_FLOAT_MAX, value)
    return value + 0.0


def sanitize_for_summary(value: float) -> tuple[float, bool]:
    """Return (value, is_nan) as MLflow's SQL store keeps the latest metric."""
    if math.isnan(value):
        return 0.0, True
    if math.isinf(value):
        return math.copysign(_FLOAT_MAX, value), False
    return value + 0.0, False


def group_metric_rows(
    metrics: Iterable[Any],
) -> dict[tuple[int, int], dict[str, float | str]]:
    """Merge MLflow metrics sharing a (step, timestamp) into one Trackio row.

    Trackio draws one row per logged step; one row per metric would make the
    dashboard's sampling and reads several times slower.
    """
    rows: dict[tuple[int, int], dict[str, float | str]] = {}
    # A batch repeats a few keys over many steps.
    trackio_keys: dict[str, str] = {}
    for metric in metrics:
        row = rows.setdefault((metric.step, metric.timestamp), {})
        key = trackio_keys.get(metric.key)
        if key is None:
            key = trackio_keys[metric.key] = to_trackio_key(metric.key)
        if key in row:
            # The same key twice at one (step, timestamp): keep both values by
            # giving the later one a row of its own.
            rows.setdefault((metric.step, metric.timestamp, len(rows)), {})[key] = (
                to_trackio_value(metric.value)
            )
            continue
        row[key] = to_trackio_value(metric.value)
    return rows


def default_experiment(artifact_location: str, created: int | None) -> Experiment:
    """Return MLflow's experiment "0" before anything is stored for it."""
    return Experiment(
        experiment_id=DEFAULT_EXPERIMENT_ID,
        name=DEFAULT_EXPERIMENT_NAME,
        artifact_location=artifact_location,
        lifecycle_stage=LifecycleStage.ACTIVE,
        tags=[],
        creation_time=created,
        last_update_time=created,
    )


def experiment_id_for(canonical_project: str) -> str:
    """Return the experiment id of a Trackio project.

    The id is derived from the project's on-disk name, so several processes
    creating the same experiment at once agree on its id without a shared
    counter.
    """
    if canonical_project == DEFAULT_EXPERIMENT_NAME:
        return DEFAULT_EXPERIMENT_ID
    digest = hashlib.sha256(canonical_project.encode()).digest()
    return str(int.from_bytes(digest[:7], "big") + 10**17)


def fit_project_name(canonical_project: str) -> str:
    """
    Return a project name short enough for Trackio's file names.

    A longer name keeps its first bytes and gets a digest of the whole name,
    so that distinct long names stay distinct and the same name always maps
    to the same project.
    """
    encoded = canonical_project.encode()
    if len(encoded) <= MAX_PROJECT_NAME_BYTES:
        return canonical_project
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    head = encoded[: MAX_PROJECT_NAME_BYTES - len(digest) - 1]
    return f"{head.decode(errors='ignore')}-{digest}"


def params_from_config(config: dict[str, Any]) -> dict[str, str]:
    """Read a Trackio-native run's config as MLflow params (strings)."""
    return {
        str(key): value if isinstance(value, str) else repr_param(value)
        for key, value in config.items()
        if key not in TRACKIO_CONFIG_KEYS
    }


def repr_param(value: Any) -> str:
    """Render a non-string config value as MLflow's `log_param` would."""
    return str(value)


def config_for_run(
    params: dict[str, str], *, user: str, created_iso: str, group: str | None
) -> dict[str, Any]:
    """Build the Trackio config (params plus dashboard columns) for a run."""
    config: dict[str, Any] = {
        key: value for key, value in params.items() if key not in TRACKIO_CONFIG_KEYS
    }
    config[CONFIG_USER] = user
    config[CONFIG_CREATED] = created_iso
    if group:
        config[CONFIG_GROUP] = group
    return config
