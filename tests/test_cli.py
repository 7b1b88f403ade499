"""The `mlflow-trackio` command: help, import, export, doctor, ui and show.

Sources and destinations are real MLflow stores (``sqlite:///`` and
``./mlruns``) and real Trackio directories in temporary directories. Exit codes
come from the real console script in a subprocess; click's `CliRunner` runs
the rest in this process. Two faults that a test cannot cause on demand, a
kill in the middle of a copy and a missing Flask, are caused inside the child
process itself by a few lines run before the CLI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sdk._cli import main
from sdk._copy import COMPLETE_TAG, SOURCE_RUN_TAG

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
T0 = 1_700_000_000_000
SERVER_HINT = 'pip install "mlflow-trackio[server]"'

COMMAND_OPTIONS = {
    "show": ["--dir", "--project", "--host", "--port", "--no-browser"],
    "ui": ["--dir", "--host", "--port", "--workers", "--artifacts-destination"],
    "import": ["SOURCE_URI", "--dir", "--experiment"],
    "export": ["DEST_URI", "--dir", "--experiment"],
    "doctor": ["--dir"],
}

# Run before the CLI in the child: SIGKILL the process right after its
# KILL_AFTER-th batch of metrics reaches the destination, mid-run.
KILL_MID_COPY = """
import os, signal
import mlflow
from sdk import _copy

_copy.METRICS_PER_BATCH = 4
log_batch = mlflow.MlflowClient.log_batch
batches = []

def log_then_die(self, run_id, **kwargs):
    log_batch(self, run_id, **kwargs)
    if kwargs.get("metrics"):
        batches.append(run_id)
        if len(batches) == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)

mlflow.MlflowClient.log_batch = log_then_die
"""

# Run before the CLI in the child: `import flask` fails as if not installed.
WITHOUT_FLASK = "import sys; sys.modules['flask'] = None"


# helpers -------------------------------------------------------------------


def run_cli(
    *args: str, prelude: str | None = None, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process, with this worktree's sources first."""
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    script = Path(sys.executable).with_name("mlflow-trackio")
    if prelude is not None:
        start = (
            f"{prelude}\nfrom sdk._cli import main\nmain(prog_name='mlflow-trackio')"
        )
        command = [sys.executable, "-c", start]
    elif script.exists():
        command = [str(script)]
    else:
        command = [sys.executable, "-m", "sdk._cli"]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def invoke(*args: str) -> Result:
    """Run the CLI in this process; `output` has stdout and stderr."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def log_source(uri: str) -> None:
    """Log two experiments: a parent run with a nested run, and a failed run."""
    client = MlflowClient(uri)
    vision = client.create_experiment("vision", tags={"team": "cv"})
    parent = client.create_run(
        vision, run_name="sweep", start_time=T0, tags={"stage": "tune"}
    ).info.run_id
    curves = [
        Metric(key, value, T0 + 1000 * step, step)
        for step in range(10)
        for key, value in (("loss", 1 / (step + 1)), ("acc", step / 10))
    ]
    params = [Param("lr", "0.01"), Param("layers", "4")]
    client.log_batch(parent, metrics=curves, params=params)
    child = client.create_run(
        vision,
        run_name="trial-1",
        start_time=T0 + 50,
        tags={MLFLOW_PARENT_RUN_ID: parent, "seed": "1"},
    ).info.run_id
    client.log_param(child, "dropout", "0.1")
    client.log_metric(child, "loss", 0.5, timestamp=T0 + 100, step=0)
    client.log_metric(child, "loss", 0.25, timestamp=T0 + 200, step=1)
    client.set_terminated(child, "FINISHED", end_time=T0 + 300)
    client.set_terminated(parent, "FINISHED", end_time=T0 + 20_000)
    text = client.create_experiment("text")
    baseline = client.create_run(text, run_name="baseline", start_time=T0 + 500)
    client.log_param(baseline.info.run_id, "model", "bert")
    client.log_metric(baseline.info.run_id, "f1", 0.8, timestamp=T0 + 600, step=3)
    client.set_terminated(baseline.info.run_id, "FAILED", end_time=T0 + 700)


def all_runs(client: MlflowClient) -> list[Any]:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    ids = [experiment.experiment_id for experiment in experiments]
    return client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)


def snapshot(uri: str) -> dict[str, Any]:
    """What a user sees through MlflowClient, keyed by names, not ids."""
    client = MlflowClient(uri)
    runs = all_runs(client)
    names = {run.info.run_id: run.info.run_name for run in runs}
    seen: dict[str, Any] = {}
    for run in runs:
        experiment = client.get_experiment(run.info.experiment_id)
        histories = {
            key: sorted(
                (m.step, m.timestamp, m.value)
                for m in client.get_metric_history(run.info.run_id, key)
            )
            for key in run.data.metrics
        }
        seen[f"{experiment.name}/{run.info.run_name}"] = {
            "experiment tags": _user_tags(experiment.tags),
            "status": run.info.status,
            "times": (run.info.start_time, run.info.end_time),
            "params": run.data.params,
            "tags": _user_tags(run.data.tags),
            "parent": names.get(run.data.tags.get(MLFLOW_PARENT_RUN_ID, "")),
            "metrics": histories,
        }
    return seen


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("mlflow")}


def run_count(uri: str) -> int:
    return len(all_runs(MlflowClient(uri)))


@pytest.fixture(scope="module")
def source_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store holding the runs of `log_source`, made once.

    Creating MLflow's schema takes seconds; each test copies the file instead.
    """
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    log_source(f"sqlite:///{path}")
    return path


@pytest.fixture
def source(source_template: Path, tmp_path: Path) -> str:
    """A real MLflow sqlite store of this test's own, holding `log_source`'s runs."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(source_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A Trackio directory that does not exist yet."""
    return tmp_path / "imported"


def trackio(directory: Path) -> str:
    return f"trackio://{directory.as_posix()}"


# tests ---------------------------------------------------------------------


class TestHelp:
    def test_group_help_lists_every_command(self) -> None:
        """`mlflow-trackio --help` exits 0 and names each command."""
        completed = run_cli("--help")

        assert completed.returncode == 0, completed.stderr
        for command in COMMAND_OPTIONS:
            assert f"  {command} " in completed.stdout

    @pytest.mark.parametrize("flag", ["--help", "-h"])
    @pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
    def test_command_help_names_its_options(self, command: str, flag: str) -> None:
        """Each command's help exits 0 and names every argument and option."""
        result = invoke(command, flag)

        assert result.exit_code == 0, result.output
        assert f"Usage: mlflow-trackio {command}" in result.output
        for option in COMMAND_OPTIONS[command]:
            assert option in result.output

    def test_help_imports_neither_trackio_nor_the_server(self) -> None:
        """Help stays fast: it loads neither Trackio nor Flask nor MLflow's server."""
        check = (
            "import atexit, sys\n"
            "atexit.register(lambda: print(sorted({'trackio', 'flask', "
            "'mlflow.server'} & set(sys.modules)), file=sys.stderr))"
        )
        completed = run_cli("--help", prelude=check)

        assert completed.returncode == 0, completed.stderr
        assert completed.stderr.strip() == "[]"

    def test_version_is_the_package_version(self) -> None:
        """`--version` prints the installed distribution's version."""
        import importlib.metadata

        result = invoke("--version")

        version = importlib.metadata.version("mlflow-trackio")
        assert result.output == f"mlflow-trackio, version {version}\n"


class TestImport:
    def test_sqlite_store_is_copied_whole(self, source: str, target: Path) -> None:
        """Runs, params, tags, nesting and every metric point arrive in Trackio."""
        result = invoke("import", source, "--dir", str(target))

        assert result.exit_code == 0, result.output
        assert "3 run(s) copied, 0 interrupted copy(ies) completed" in result.output
        assert snapshot(trackio(target)) == snapshot(source)
        assert len(snapshot(source)["vision/sweep"]["metrics"]["loss"]) == 10

    def test_copies_name_their_source_run(self, source: str, target: Path) -> None:
        """Each copy carries its source run id and is marked complete."""
        invoke("import", source, "--dir", str(target))

        sources = {run.info.run_id for run in all_runs(MlflowClient(source))}
        copies = all_runs(MlflowClient(trackio(target)))
        assert {run.data.tags[SOURCE_RUN_TAG] for run in copies} == sources
        assert {run.data.tags[COMPLETE_TAG] for run in copies} == {"true"}

    def test_file_store_is_copied_whole(
        self, tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative ./mlruns file store imports like a database does."""
        monkeypatch.chdir(tmp_path)
        log_source("./mlruns")

        result = invoke("import", "./mlruns", "--dir", str(target))

        assert result.exit_code == 0, result.output
        assert "3 run(s) copied" in result.output
        assert snapshot(trackio(target)) == snapshot(str(tmp_path / "mlruns"))

    def test_second_import_duplicates_nothing(self, source: str, target: Path) -> None:
        """Importing twice leaves exactly one copy of each run and metric point."""
        invoke("import", source, "--dir", str(target))
        first = snapshot(trackio(target))

        again = invoke("import", source, "--dir", str(target))

        assert again.exit_code == 0, again.output
        assert "0 run(s) copied, 0 interrupted copy(ies) completed, 3 already" in (
            again.output
        )
        assert run_count(trackio(target)) == 3
        assert snapshot(trackio(target)) == first == snapshot(source)

    def test_one_experiment_then_all_copies_the_rest(
        self, source: str, target: Path
    ) -> None:
        """After importing one experiment, a full import adds only the other."""
        one = invoke("import", source, "--dir", str(target), "--experiment", "text")
        assert "1 run(s) copied" in one.output
        assert set(snapshot(trackio(target))) == {"text/baseline"}

        rest = invoke("import", source, "--dir", str(target))

        assert "2 run(s) copied, 0 interrupted copy(ies) completed, 1 already" in (
            rest.output
        )
        assert run_count(trackio(target)) == 3
        assert snapshot(trackio(target)) == snapshot(source)

    def test_import_killed_mid_run_is_completed_by_the_next(
        self, source: str, target: Path
    ) -> None:
        """A copy SIGKILLed between metric batches is finished, with no doubles."""
        killed = run_cli(
            "import",
            source,
            "--dir",
            str(target),
            prelude=KILL_MID_COPY,
            KILL_AFTER="2",
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        copies = all_runs(MlflowClient(trackio(target)))
        [partial] = [run for run in copies if COMPLETE_TAG not in run.data.tags]
        halfway = snapshot(trackio(target))[f"vision/{partial.info.run_name}"]
        whole = snapshot(source)[f"vision/{partial.info.run_name}"]
        assert halfway["metrics"] != whole["metrics"]

        resumed = invoke("import", source, "--dir", str(target))

        assert resumed.exit_code == 0, resumed.output
        assert "1 interrupted copy(ies) completed" in resumed.output
        assert run_count(trackio(target)) == 3
        assert snapshot(trackio(target)) == snapshot(source)

    def test_run_still_running_is_updated_then_completed(
        self, tmp_path: Path, target: Path
    ) -> None:
        """A RUNNING source run gets its new points on each import, never twice."""
        source = f"sqlite:///{tmp_path / 'live.db'}"
        client = MlflowClient(source)
        run_id = client.create_run("0", run_name="live", start_time=T0).info.run_id
        for step in range(2):
            client.log_metric(run_id, "loss", 1 / (step + 1), T0 + step, step)
        invoke("import", source, "--dir", str(target))
        for step in range(2, 4):
            client.log_metric(run_id, "loss", 1 / (step + 1), T0 + step, step)

        running = invoke("import", source, "--dir", str(target))
        client.set_terminated(run_id, end_time=T0 + 10)
        finished = invoke("import", source, "--dir", str(target))

        assert "1 still running in the source updated" in running.output
        assert "1 interrupted copy(ies) completed" in finished.output
        assert run_count(trackio(target)) == 1
        assert snapshot(trackio(target)) == snapshot(source)
        assert snapshot(source)["Default/live"]["status"] == "FINISHED"


class TestExport:
    def test_export_to_fresh_sqlite_reproduces_the_data(
        self, source: str, target: Path, tmp_path: Path
    ) -> None:
        """sqlite -> Trackio -> a new sqlite store shows the same runs, twice run."""
        invoke("import", source, "--dir", str(target))
        out = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"

        first = invoke("export", out, "--dir", str(target))
        again = invoke("export", out, "--dir", str(target))

        assert first.exit_code == 0, first.output
        assert "3 run(s) copied" in first.output
        assert "0 run(s) copied, 0 interrupted copy(ies) completed, 3 already" in (
            again.output
        )
        assert run_count(out) == 3
        assert snapshot(out) == snapshot(source)

    def test_export_back_to_the_origin_copies_nothing(
        self, source: str, target: Path
    ) -> None:
        """Runs that came from the destination are recognised, not copied back."""
        invoke("import", source, "--dir", str(target))

        result = invoke("export", source, "--dir", str(target))

        assert "0 run(s) copied, 0 interrupted copy(ies) completed, 3 already" in (
            result.output
        )
        assert run_count(source) == 3

    def test_selected_experiment_only(
        self, source: str, target: Path, tmp_path: Path
    ) -> None:
        """--experiment limits the export to the named experiment."""
        invoke("import", source, "--dir", str(target))
        out = f"sqlite:///{tmp_path / 'vision.db'}"

        invoke("export", out, "--dir", str(target), "--experiment", "vision")

        assert set(snapshot(out)) == {"vision/sweep", "vision/trial-1"}


class TestBadInput:
    @pytest.mark.parametrize(
        "uri", ["sqlite:///{tmp}/missing.db", "{tmp}/missing-mlruns", "file://{tmp}/x"]
    )
    def test_missing_source_is_a_usage_error(
        self, uri: str, tmp_path: Path, target: Path
    ) -> None:
        """A source that is not there exits 2, naming it, and creates nothing."""
        uri = uri.format(tmp=tmp_path)

        completed = run_cli("import", uri, "--dir", str(target))

        assert completed.returncode == 2
        assert "does not exist. Give the path of an existing MLflow store." in (
            completed.stderr
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["trackio"]

    @pytest.mark.parametrize("command", ["import", "export"])
    def test_sqlite_file_without_mlflow_tables_is_left_alone(
        self, command: str, source: str, target: Path, tmp_path: Path
    ) -> None:
        """A Trackio project file given as the MLflow store exits 2, unchanged."""
        invoke("import", source, "--dir", str(target))
        project = target / "vision.db"
        before = project.read_bytes()

        completed = run_cli(command, f"sqlite:///{project}", "--dir", str(target))

        assert completed.returncode == 2
        assert "holds no MLflow store" in completed.stderr
        assert project.read_bytes() == before

    def test_unknown_experiment_fails_with_exit_1(
        self, source: str, target: Path
    ) -> None:
        """An --experiment the source lacks exits 1 and names it."""
        completed = run_cli(
            "import", source, "--dir", str(target), "--experiment", "audio"
        )

        assert completed.returncode == 1
        assert "Error: No active experiment named audio in the source." in (
            completed.stderr
        )

    def test_unreachable_server_fails_with_exit_1(self, target: Path) -> None:
        """A tracking server that does not answer exits 1 with the cause."""
        completed = run_cli(
            "import",
            "http://127.0.0.1:9",
            "--dir",
            str(target),
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        )

        assert completed.returncode == 1
        assert "Connection refused" in completed.stderr
        assert "Traceback" not in completed.stderr

    def test_source_equal_to_destination_is_a_usage_error(self, target: Path) -> None:
        """Importing a Trackio directory into itself exits 2."""
        target.mkdir()

        completed = run_cli("import", trackio(target), "--dir", str(target))

        assert completed.returncode == 2
        assert "is the destination itself" in completed.stderr

    @pytest.mark.parametrize("command", ["export", "show"])
    def test_missing_trackio_dir_is_a_usage_error(
        self, command: str, tmp_path: Path
    ) -> None:
        """Commands that read a Trackio directory refuse one that is not there."""
        missing = tmp_path / "nowhere"
        args = ["sqlite:///out.db"] if command == "export" else []

        result = invoke(command, *args, "--dir", str(missing))

        assert result.exit_code == 2
        assert f"Directory '{missing}' does not exist." in result.output


def _can_write(directory: Path) -> bool:
    probe = directory / "probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write, even when it runs as root."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    immutable = False
    if _can_write(directory):  # root ignores the mode; an immutable flag holds
        immutable = subprocess.run(["chattr", "+i", str(directory)]).returncode == 0
        if not immutable or _can_write(directory):
            pytest.skip("runs as root, which ignores chmod; chattr +i unavailable")
    yield directory
    if immutable:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o700)


class TestDoctor:
    def test_reports_versions_data_entry_points_and_frameworks(
        self, trackio_dir: Path
    ) -> None:
        """A healthy set-up: every section is filled and the exit code is 0."""
        import importlib.metadata
        import platform

        result = invoke("doctor")

        assert result.exit_code == 0, result.output
        for distribution in ("mlflow-trackio", "trackio"):
            version = importlib.metadata.version(distribution)
            assert f"{distribution:<18} {version}" in result.output
        assert platform.python_version() in result.output
        assert f"{trackio_dir} (from TRACKIO_DIR)" in result.output
        assert f"trackio://{trackio_dir}" in result.output
        assert "exists, writable, 0 project(s)" in result.output
        for scheme in ("trackio", "trackio+http", "trackio+https"):
            assert f"{scheme:<18} sdk._store:TrackioStore ok" in result.output
        assert "Autolog integrations\n  scikit-learn" in result.output
        assert result.output.endswith("No problems found.\n")

    def test_read_only_directory_is_a_problem(self, read_only_dir: Path) -> None:
        """A directory that cannot be written is reported, with exit code 1."""
        completed = run_cli("doctor", "--dir", str(read_only_dir))

        assert completed.returncode == 1
        assert "exists, not writable" in completed.stdout
        assert f"{read_only_dir} is not writable. Point --dir" in completed.stderr

    def test_missing_directory_in_a_writable_place_is_fine(
        self, tmp_path: Path
    ) -> None:
        """A directory the first run will create is not a problem."""
        result = invoke("doctor", "--dir", str(tmp_path / "later"))

        assert result.exit_code == 0, result.output
        assert "missing; created on the first run" in result.output
        assert not (tmp_path / "later").exists()

    def test_file_in_place_of_the_directory_is_a_problem(self, tmp_path: Path) -> None:
        """A file where the directory should be exits 1 and says so."""
        (tmp_path / "file").write_text("")

        result = invoke("doctor", "--dir", str(tmp_path / "file"))

        assert result.exit_code == 1
        assert "is not a directory. Point --dir or TRACKIO_DIR" in result.output


class TestUi:
    def test_without_flask_names_the_extra_to_install(self, tmp_path: Path) -> None:
        """With Flask missing, `ui` exits 1 naming the [server] extra."""
        directory = tmp_path / "never-made"

        completed = run_cli("ui", "--dir", str(directory), prelude=WITHOUT_FLASK)

        assert completed.returncode == 1
        assert "`mlflow-trackio ui` needs MLflow's server" in completed.stderr
        assert SERVER_HINT in completed.stderr
        assert not directory.exists()

    def test_doctor_without_flask_says_ui_is_unavailable(self) -> None:
        """doctor shows the skinny client when Flask is missing."""
        completed = run_cli("doctor", prelude=WITHOUT_FLASK)

        assert completed.returncode == 0, completed.stderr
        assert "(skinny, no `ui`)" in completed.stdout


def _documented_help() -> dict[str, str]:
    """The `--help` outputs pasted in docs/cli.md, by command ("" for the group)."""
    page = (ROOT / "docs" / "cli.md").read_text()
    pattern = r"```text\n\$ mlflow-trackio ?(\w*) --help\n(.*?)```"
    return {name: text for name, text in re.findall(pattern, page, re.DOTALL)}


class TestDocs:
    def test_every_help_is_on_the_cli_page(self) -> None:
        """docs/cli.md shows the help of the group and of every command."""
        assert sorted(_documented_help()) == sorted(["", *COMMAND_OPTIONS])

    @pytest.mark.parametrize("command", ["", *sorted(COMMAND_OPTIONS)])
    def test_help_on_the_cli_page_is_current(self, command: str) -> None:
        """The pasted help is exactly what the command prints now."""
        args = [*filter(None, [command]), "--help"]

        # Click's width outside a terminal: 80 columns less its margin of 2.
        result = CliRunner().invoke(main, args, terminal_width=78)

        assert result.output == _documented_help()[command]
