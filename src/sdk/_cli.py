"""
The ``mlflow-trackio`` command: see runs, copy them in and out, check the set-up.

Commands import Trackio, MLflow's server and MLflow's client inside their
bodies, so ``mlflow-trackio --help`` loads neither Trackio nor the server.

Exit codes: 0 on success, 1 when a command fails (a `click.ClickException`,
whose message says what to do), 2 for a usage error (click's own). `ui`
returns the exit code of the ``mlflow server`` it runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import click

from sdk import _config

T = TypeVar("T")

_SERVER_HINT = 'pip install "mlflow-trackio[server]"'
_REGISTRY_FILE = "mlflow-registry.sqlite"  # not *.db: Trackio lists those as projects
_STORE_CLASS = "sdk._store:TrackioStore"
_STOP_GRACE_SECONDS = 15.0

_DIR_HELP = "Trackio directory.  [default: TRACKIO_DIR, else Trackio's default]"
_EXPERIMENT_HELP = "Copy only this experiment (repeat for more).  [default: all]"


def _dir_option(exists: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    kind = click.Path(exists=exists, file_okay=False, path_type=Path)
    return click.option("--dir", "directory", type=kind, help=_DIR_HELP)


def _resolve_dir(directory: Path | None) -> Path:
    if directory is not None:
        return directory.expanduser().resolve()
    from sdk._backends._local import default_directory

    return default_directory()


def _trackio_uri(directory: Path) -> str:
    return f"{_config.LOCAL_SCHEME}://{directory.as_posix()}"


@contextmanager
def _as_click_errors() -> Iterator[None]:
    """Turn MLflow's and the OS's errors into messages with exit code 1."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise click.ClickException(exc.message) from None
    except OSError as exc:
        raise click.ClickException(f"{exc}.") from None


@click.group(
    name="mlflow-trackio", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="mlflow-trackio", prog_name="mlflow-trackio")
def main() -> None:
    """
    See, copy and check MLflow runs kept in a Trackio directory.
    """


# show ----------------------------------------------------------------------


@main.command()
@_dir_option(exists=True)
@click.option("--project", help="Project to open first.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address.")
@click.option("--port", type=int, help="Port.  [default: 7860 or the next free]")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
def show(
    directory: Path | None,
    project: str | None,
    host: str,
    port: int | None,
    no_browser: bool,
) -> None:
    """
    Open Trackio's dashboard over the directory.

    Blocks until Ctrl-C.
    """
    if directory is not None:
        from sdk._manual import point_trackio_at

        point_trackio_at(directory.expanduser().resolve())
    import trackio

    app = trackio.show(
        project=project,
        host=host,
        server_port=port,
        open_browser=not no_browser,
        block_thread=True,
    )
    app[0].close()


# ui ------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@_dir_option(exists=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address.")
@click.option("--port", default=5000, show_default=True, help="Port.")
@click.option("--workers", type=click.IntRange(min=1), help="Server processes.")
@click.option(
    "--artifacts-destination",
    help="Where uploaded artifacts go.  [default: <dir>/mlflow-artifacts]",
)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def ui(
    directory: Path | None,
    host: str,
    port: int,
    workers: int | None,
    artifacts_destination: str | None,
    server_args: tuple[str, ...],
) -> None:
    """
    Run MLflow's UI and REST API (`mlflow server`) over the directory.

    Clients anywhere log with MlflowClient("http://HOST:PORT"); artifacts are
    uploaded through the server. Anything after `--` goes to `mlflow server`
    unchanged, for example `-- --allowed-hosts my.host`. Ctrl-C stops it.
    """
    _require_server_extra()
    root = _resolve_dir(directory)
    with _as_click_errors():
        root.mkdir(parents=True, exist_ok=True)
    command = _server_command(root, host, port, workers, artifacts_destination)
    click.echo(
        f"MLflow UI over {root} at http://{host}:{port} (Ctrl-C stops it).", err=True
    )
    sys.exit(_serve([*command, *server_args]))


def _require_server_extra() -> None:
    try:
        import flask  # noqa: F401
        import mlflow.server  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"`mlflow-trackio ui` needs MLflow's server, which is not installed "
            f"({exc}). Install it with: {_SERVER_HINT}"
        ) from None


def _server_command(
    root: Path,
    host: str,
    port: int,
    workers: int | None,
    artifacts_destination: str | None,
) -> list[str]:
    destination = artifacts_destination or str(root / "mlflow-artifacts")
    if not urlparse(destination).scheme:
        destination = str(Path(destination).expanduser().resolve())
    command = [sys.executable, "-m", "mlflow", "server"]
    command += ["--backend-store-uri", _trackio_uri(root)]
    command += ["--registry-store-uri", f"sqlite:///{(root / _REGISTRY_FILE)}"]
    command += ["--serve-artifacts", "--artifacts-destination", destination]
    command += ["--host", host, "--port", str(port)]
    return command + (["--workers", str(workers)] if workers else [])


def _serve(command: list[str]) -> int:
    """Run the server in its own process group, forwarding Ctrl-C and SIGTERM.

    MLflow's server starts uvicorn (or gunicorn) as a child of its own; a group
    lets one signal reach them all, and lets nothing outlive this command.
    """
    posix = hasattr(os, "killpg")
    process = subprocess.Popen(command, start_new_session=posix)
    stopping: list[int] = []

    def forward(signum: int, _frame: object = None) -> None:
        stopping.append(signum)
        _signal_group(process, signum)

    # Closing the terminal (SIGHUP) must stop the server too: it is in a
    # session of its own, so the terminal's signals do not reach it.
    stops = [signal.SIGTERM] + ([signal.SIGHUP] if posix else [])
    previous = {signum: signal.signal(signum, forward) for signum in stops}
    try:
        while process.poll() is None:
            try:
                process.wait(timeout=_STOP_GRACE_SECONDS if stopping else None)
            except KeyboardInterrupt:
                forward(signal.SIGINT)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL if posix else signal.SIGTERM)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signal_group(process, signal.SIGTERM)
    code = process.returncode
    return 128 - code if code < 0 else code


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signum)
        elif process.poll() is None:
            process.send_signal(signum)
    except (ProcessLookupError, PermissionError):
        pass


# import and export ---------------------------------------------------------


@main.command(name="import")
@click.argument("source_uri")
@_dir_option(exists=False)
@click.option("--experiment", "experiments", multiple=True, help=_EXPERIMENT_HELP)
def import_(
    source_uri: str, directory: Path | None, experiments: tuple[str, ...]
) -> None:
    """
    Copy runs from an MLflow tracking URI into Trackio.

    SOURCE_URI is any MLflow tracking URI: sqlite:///mlflow.db, ./mlruns, or
    http://host:5000. Running it again copies only what is missing: finished
    copies are skipped and an interrupted one is completed.
    """
    _check_source_exists(source_uri)
    root = _resolve_dir(directory)
    with _as_click_errors():
        root.mkdir(parents=True, exist_ok=True)
    _copy(source_uri, _trackio_uri(root), experiments)


def _check_source_exists(source_uri: str) -> None:
    """Refuse a local source that is not there: MLflow would create it empty."""
    local = _local_path(source_uri)
    if local is not None and not local.exists():
        raise click.BadParameter(
            f"{local} does not exist. Give the path of an existing MLflow store.",
            param_hint="SOURCE_URI",
        )
    _check_sqlite_is_mlflow(source_uri, "SOURCE_URI")


def _local_path(uri: str) -> Path | None:
    """Return the file or directory a local tracking URI names, else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        return None if path in ("", ":memory:") else Path(path)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    return None


def _check_sqlite_is_mlflow(uri: str, param_hint: str) -> None:
    """Refuse an SQLite file that holds no MLflow store.

    MLflow adds its tables to any database it opens, so a Trackio project or
    another program's file given by mistake would be changed, then fail.
    """
    local = _local_path(uri) if urlparse(uri).scheme == "sqlite" else None
    if local is None or not local.is_file():
        return
    if local.stat().st_size == 0 and param_hint == "DEST_URI":
        return  # SQLite takes an empty file for a new database
    if not _has_mlflow_tables(local):
        raise click.BadParameter(
            f"{local} holds no MLflow store, and MLflow would add its tables to "
            "it. Give the path of an MLflow sqlite store.",
            param_hint=param_hint,
        )


def _has_mlflow_tables(path: Path) -> bool:
    read_only = f"{path.resolve().as_uri()}?mode=ro"
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    try:
        with closing(sqlite3.connect(read_only, uri=True)) as db:
            names = {row[0] for row in db.execute(query)}
    except sqlite3.DatabaseError:
        return False
    return {"alembic_version", "experiments", "runs"} <= names


@main.command()
@click.argument("dest_uri")
@_dir_option(exists=True)
@click.option("--experiment", "experiments", multiple=True, help=_EXPERIMENT_HELP)
def export(dest_uri: str, directory: Path | None, experiments: tuple[str, ...]) -> None:
    """
    Copy runs from Trackio to an MLflow tracking URI.

    DEST_URI is any MLflow tracking URI, for example sqlite:///mlflow.db or
    http://host:5000. Running it again copies only what is missing.
    """
    _check_sqlite_is_mlflow(dest_uri, "DEST_URI")
    _copy(_trackio_uri(_resolve_dir(directory)), dest_uri, experiments)


def _copy(source_uri: str, dest_uri: str, experiments: tuple[str, ...]) -> None:
    from sdk._autolog import register_store
    from sdk._copy import Copier

    # Reading ./mlruns is what migrating off MLflow's file store needs.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    register_store()
    if _same_store(source_uri, dest_uri):
        raise click.UsageError(f"{source_uri} is the destination itself.")
    with _as_click_errors():
        copier = Copier(source_uri, dest_uri)
        plan = copier.plan(list(experiments))
        total = sum(len(runs) for _, runs in plan)
        bar = click.progressbar(length=total, label="Copying runs", file=sys.stderr)
        with bar:
            for experiment, runs in plan:
                copier.copy_experiment(experiment, runs, bar.update)
    click.echo(f"{copier.tally.summary()} From {source_uri} to {dest_uri}.")


def _same_store(source_uri: str, dest_uri: str) -> bool:
    return source_uri.rstrip("/") == dest_uri.rstrip("/")


# doctor --------------------------------------------------------------------

# (name shown, MLflow flavor, distributions that provide it)
_FRAMEWORKS = (
    ("scikit-learn", "sklearn", ("scikit-learn",)),
    ("XGBoost", "xgboost", ("xgboost",)),
    ("LightGBM", "lightgbm", ("lightgbm",)),
    ("PyTorch Lightning", "pytorch-lightning", ("lightning", "pytorch-lightning")),
    ("Transformers", "transformers", ("transformers",)),
    ("Keras", "keras", ("keras",)),
    ("TensorFlow", "tensorflow", ("tensorflow",)),
    ("statsmodels", "statsmodels", ("statsmodels",)),
    ("Spark MLlib", "spark", ("pyspark",)),
)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), help=_DIR_HELP)
def doctor(directory: Path | None) -> None:
    """
    Check the installation and the Trackio directory.

    Exits with 1 when something needs fixing; each problem says how.
    """
    problems: list[str] = []
    _section("Versions", _versions(problems))
    _section("Data", _data(directory, problems))
    _section("Store (mlflow.tracking_store entry points)", _entry_points(problems))
    _section("Autolog integrations", _frameworks())
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise click.ClickException(f"{len(problems)} problem(s):\n{listed}")
    click.echo("No problems found.")


def _section(title: str, rows: list[tuple[str, str]]) -> None:
    click.echo(title)
    for label, value in rows:
        click.echo(f"  {label:<18} {value}")
    click.echo()


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _versions(problems: list[str]) -> list[tuple[str, str]]:
    server = importlib.util.find_spec("flask") is not None
    mlflow_kind = "full package, `ui` works" if server else "skinny, no `ui`"
    rows = [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("mlflow-trackio", _dist_version("mlflow-trackio") or "not installed"),
        ("mlflow", f"{_dist_version('mlflow', 'mlflow-skinny')} ({mlflow_kind})"),
    ]
    trackio_version = _dist_version("trackio")
    if trackio_version is None:
        problems.append("Trackio is not installed: pip install mlflow-trackio.")
    return [*rows, ("trackio", trackio_version or "not installed")]


def _data(directory: Path | None, problems: list[str]) -> list[tuple[str, str]]:
    if directory is not None:
        origin, root = "--dir", directory.expanduser().resolve()
    elif os.environ.get("TRACKIO_DIR"):
        origin, root = "TRACKIO_DIR", _resolve_dir(None)
    else:
        try:
            origin, root = "Trackio's default", _resolve_dir(None)
        except ImportError as exc:
            problems.append(f"Trackio cannot be imported ({exc}).")
            return [("directory", "unknown")]
    state, problem = _directory_state(root)
    if problem:
        problems.append(problem)
    return [
        ("directory", f"{root} (from {origin})"),
        ("tracking URI", _trackio_uri(root)),
        ("state", state),
    ]


def _directory_state(root: Path) -> tuple[str, str | None]:
    fix = "Point --dir or TRACKIO_DIR at a directory you can write."
    if root.exists() and not root.is_dir():
        return "not a directory", f"{root} is not a directory. {fix}"
    if not root.exists():
        parent = next(p for p in root.parents if p.exists())
        if parent.is_dir() and _writable(parent):
            return "missing; created on the first run", None
        return "missing", f"{root} cannot be created in {parent}. {fix}"
    if not _writable(root):
        return "exists, not writable", f"{root} is not writable. {fix}"
    projects = len(list(root.glob("*.db")))
    return f"exists, writable, {projects} project(s)", None


def _writable(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def _entry_points(problems: list[str]) -> list[tuple[str, str]]:
    found = importlib.metadata.entry_points(group="mlflow.tracking_store")
    rows = []
    for scheme in _config.ALL_SCHEMES:
        values = sorted({ep.value for ep in found if ep.name == scheme})
        if values == [_STORE_CLASS]:
            rows.append((scheme, f"{_STORE_CLASS} ok"))
            continue
        rows.append((scheme, ", ".join(values) or "missing"))
        problems.append(
            f"Scheme {scheme!r} maps to {values or 'nothing'}, not {_STORE_CLASS}, "
            "so `mlflow server` and child processes cannot open trackio:// URIs. "
            "Reinstall: pip install --force-reinstall --no-deps mlflow-trackio."
        )
    return rows


def _frameworks() -> list[tuple[str, str]]:
    rows, missing = [], []
    for shown, flavor, distributions in _FRAMEWORKS:
        version = _dist_version(*distributions)
        if version is None:
            missing.append(shown)
        else:
            rows.append((shown, f"{version:<9}{_support(flavor, version)}"))
    if missing:
        rows.append(("not installed", ", ".join(missing)))
    return rows


def _support(flavor: str, version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        from mlflow.utils.autologging_utils.versioning import (
            get_min_max_version_and_pip_release,
        )

        low, high, _ = get_min_max_version_and_pip_release(flavor)
        inside = Version(low) <= Version(version) <= Version(high)
    except (ImportError, KeyError, InvalidVersion):
        return "autolog available"
    if inside:
        return "autolog ok"
    return f"outside MLflow's tested {low} to {high}: autolog warns"


if __name__ == "__main__":
    main(prog_name="mlflow-trackio")
