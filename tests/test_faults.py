"""Faults caused for real: each is a clear MlflowException, and nothing is lost.

Every fault here is produced on a real file, none is mocked: a lock held by
another process (SQLite's, and Trackio's lock file), a read-only folder (a
tmpfs remounted read-only, and ``chattr +i``), a full disk (a 2 MiB tmpfs), a
file size limit (``RLIMIT_FSIZE``, which SQLite reports as a disk I/O error),
and damaged files. The tests run as root in a sandbox, where ``chmod`` stops
nothing; mounting needs CAP_SYS_ADMIN, so those tests skip, saying why, on a
machine that refuses ``mount``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

import sdk
from sdk import TrackioStore
from sdk._backends._sqlite import BUSY_TIMEOUT_ENV
from tests.trackio_reader import TrackioReader
from tests.workers.children import Children

_WINDOW_S = 1.0
_MESSAGE_LIMIT = 200
_POINTS = 5


@pytest.fixture
def busy_window(monkeypatch: pytest.MonkeyPatch) -> float:
    """A short lock-wait window, so that waiting tests stay quick."""
    monkeypatch.setenv(BUSY_TIMEOUT_ENV, str(_WINDOW_S))
    return _WINDOW_S


@dataclass
class Seeded:
    """A project with one run of known params and points, all connections closed."""

    directory: Path
    project: str
    experiment_id: str
    run_id: str

    @property
    def path(self) -> Path:
        return self.directory / f"{self.project}.db"

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(f"trackio://{self.directory}")


def _seed(directory: Path, project: str = "fault") -> Seeded:
    store = TrackioStore(f"trackio://{directory}")
    try:
        experiment_id = store.create_experiment(project)
        run_id = store.create_run(experiment_id, "tester", 1000, [], "seeded")
        run_id = run_id.info.run_id
        points = [Metric("x", float(s), 1000 + s, s) for s in range(_POINTS)]
        store.log_batch(run_id, points, [Param("p", "1")], [])
    finally:
        store.backend.close()
    return Seeded(directory, project, experiment_id, run_id)


def _check_intact(client: mlflow.MlflowClient, seeded: Seeded) -> None:
    history = client.get_metric_history(seeded.run_id, "x")
    assert sorted((m.step, m.value) for m in history) == [
        (s, float(s)) for s in range(_POINTS)
    ]
    assert client.get_run(seeded.run_id).data.params == {"p": "1"}


def _integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def _check_clear(error: MlflowException, path: Path, error_code: str) -> None:
    assert error.error_code == error_code
    assert str(path) in error.message
    assert len(error.message) < _MESSAGE_LIMIT, error.message


class _Holder:
    """A child process that holds a lock on a file while told to."""

    def __init__(self, children: Children, path: Path, kind: str) -> None:
        self._child = children.start("lock_holder.py", path, kind)

    def _say(self, command: str, answer: str) -> None:
        self._child.stdin.write(f"{command}\n")
        self._child.stdin.flush()
        got = self._child.stdout.readline().strip()
        assert got == answer, f"lock holder said {got!r}: {self._child.stderr}"

    def lock(self) -> None:
        self._say("lock", "locked")

    def release(self) -> None:
        self._say("release", "released")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.lock()
        try:
            yield
        finally:
            self.release()


# Calls that write, each as MLflow's client makes it.
WRITES: dict[str, Callable[[mlflow.MlflowClient, Seeded], Any]] = {
    "log_metric": lambda c, s: c.log_metric(s.run_id, "x", 9.0, step=9),
    "log_param": lambda c, s: c.log_param(s.run_id, "q", "2"),
    "set_tag": lambda c, s: c.set_tag(s.run_id, "t", "v"),
    "create_run": lambda c, s: c.create_run(s.experiment_id),
    "set_terminated": lambda c, s: c.set_terminated(s.run_id),
}


class TestLockedDatabase:
    @pytest.fixture
    def seeded(self, trackio_dir: Path) -> Seeded:
        return _seed(trackio_dir)

    @pytest.fixture
    def holder(self, children: Children, seeded: Seeded) -> _Holder:
        return _Holder(children, seeded.path, "sqlite")

    @pytest.mark.parametrize("write", list(WRITES))
    def test_write_gives_up_after_the_window(
        self, write: str, seeded: Seeded, holder: _Holder, busy_window: float
    ) -> None:
        """A write waits out the window, then names the file and the lock."""
        client = seeded.client()
        with holder.held():
            started = time.monotonic()
            with pytest.raises(MlflowException, match="locked") as caught:
                WRITES[write](client, seeded)
        waited = time.monotonic() - started
        _check_clear(caught.value, seeded.path, "TEMPORARILY_UNAVAILABLE")
        assert re.search(r"by another process for 1\.\d s", caught.value.message)
        assert BUSY_TIMEOUT_ENV in caught.value.message
        assert busy_window <= waited < busy_window + 3

    @pytest.mark.parametrize("window", [0.3, 2.0])
    def test_the_window_comes_from_the_environment(
        self,
        window: float,
        seeded: Seeded,
        holder: _Holder,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """MLFLOW_TRACKIO_BUSY_TIMEOUT sets how long a write waits."""
        monkeypatch.setenv(BUSY_TIMEOUT_ENV, str(window))
        client = seeded.client()
        with holder.held():
            started = time.monotonic()
            with pytest.raises(MlflowException, match="locked"):
                client.log_metric(seeded.run_id, "x", 9.0, step=9)
        assert window <= time.monotonic() - started < window + 1.5

    def test_an_unreadable_window_is_a_clear_error(
        self, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A window that is not a number fails with a sentence saying so."""
        monkeypatch.setenv(BUSY_TIMEOUT_ENV, "soon")
        with pytest.raises(MlflowException, match="'soon' is not a number"):
            seeded.client().get_run(seeded.run_id)

    def test_reads_go_on_while_locked(
        self, seeded: Seeded, holder: _Holder, busy_window: float
    ) -> None:
        """Readers never wait for a writer's lock (WAL)."""
        client = seeded.client()
        with holder.held():
            started = time.monotonic()
            _check_intact(client, seeded)
            [run] = client.search_runs([seeded.experiment_id])
            assert time.monotonic() - started < busy_window
        assert run.info.run_id == seeded.run_id

    @pytest.mark.parametrize("write", list(WRITES))
    def test_after_release_data_is_intact_and_writes_work(
        self, write: str, seeded: Seeded, holder: _Holder, busy_window: float
    ) -> None:
        """Once the lock is gone, the same client writes again; nothing was lost."""
        client = seeded.client()
        with holder.held(), pytest.raises(MlflowException, match="locked"):
            WRITES[write](client, seeded)

        WRITES[write](client, seeded)

        client.log_metric(seeded.run_id, "after", 1.0, step=0)
        assert [m.value for m in client.get_metric_history(seeded.run_id, "after")] == [
            1.0
        ]
        assert client.get_run(seeded.run_id).data.params["p"] == "1"
        assert _integrity(seeded.path) == "ok"

    def test_trackio_lock_file_held_when_creating_a_project(
        self, children: Children, trackio_dir: Path
    ) -> None:
        """Trackio's own lock file, held past Trackio's 10 s, is a clear error."""
        holder = _Holder(children, trackio_dir / "fresh.lock", "flock")
        client = mlflow.MlflowClient(f"trackio://{trackio_dir}")
        with holder.held(), pytest.raises(MlflowException, match="lock file") as caught:
            client.create_experiment("fresh")
        _check_clear(caught.value, trackio_dir / "fresh.db", "TEMPORARILY_UNAVAILABLE")
        assert client.get_experiment_by_name("fresh") is None

        experiment_id = client.create_experiment("fresh")

        assert client.get_experiment(experiment_id).name == "fresh"


# Read-only folders -----------------------------------------------------------


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount tmpfs file systems of a given size; all unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        if done.returncode != 0:
            pytest.skip(f"this machine refuses to mount a tmpfs: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        # Lazy, because the store the test built may still hold files open.
        _run("umount", "-l", str(where))


@contextlib.contextmanager
def _read_only(how: str, directory: Path) -> Iterator[None]:
    if how == "read-only mount":
        done = _run("mount", "-o", "remount,ro", str(directory))
        assert done.returncode == 0, done.stderr
        undo = ("mount", "-o", "remount,rw", str(directory))
    else:
        files = [str(directory), *map(str, directory.iterdir())]
        done = _run("chattr", "+i", *files)
        assert done.returncode == 0, done.stderr
        undo = ("chattr", "-i", *files)
    try:
        yield
    finally:
        assert _run(*undo).returncode == 0


READ_ONLY_KINDS = ["read-only mount", "immutable files"]


@pytest.fixture(params=READ_ONLY_KINDS)
def read_only_kind(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mount_tmpfs: Callable[[str, str], Path],
) -> Iterator[tuple[str, Path]]:
    """A writable folder of one kind: its own tmpfs, or one on the disk."""
    if request.param == "read-only mount":
        yield request.param, mount_tmpfs("folder", "16m")
        return
    folder = tmp_path / "folder"
    folder.mkdir()
    yield request.param, folder
    # An immutable file would stop pytest from removing the folder.
    _run("chattr", "-R", "-i", str(folder))


class TestReadOnlyFolder:
    def test_writing_a_project_there_is_permission_denied(
        self, read_only_kind: tuple[str, Path]
    ) -> None:
        """Logging to a project in a read-only folder names the file and why."""
        how, folder = read_only_kind
        seeded = _seed(folder)
        client = seeded.client()
        with (
            _read_only(how, folder),
            pytest.raises(MlflowException, match="read-only") as caught,
        ):
            client.log_metric(seeded.run_id, "x", 9.0, step=9)
        _check_clear(caught.value, seeded.path, "PERMISSION_DENIED")

    def test_creating_a_project_there_is_permission_denied(
        self, read_only_kind: tuple[str, Path]
    ) -> None:
        """Trackio's schema set-up failing in a read-only folder is translated."""
        how, folder = read_only_kind
        client = mlflow.MlflowClient(f"trackio://{folder}")
        with (
            _read_only(how, folder),
            pytest.raises(MlflowException, match="read-only") as caught,
        ):
            client.create_experiment("fresh")
        _check_clear(caught.value, folder / "fresh.db", "PERMISSION_DENIED")

    def test_data_is_intact_and_writable_once_undone(
        self, read_only_kind: tuple[str, Path]
    ) -> None:
        """After the folder is writable again, the same client reads and writes."""
        how, folder = read_only_kind
        seeded = _seed(folder)
        client = seeded.client()
        with _read_only(how, folder), pytest.raises(MlflowException, match="read-only"):
            client.log_metric(seeded.run_id, "x", 9.0, step=9)

        client.log_metric(seeded.run_id, "after", 1.0, step=0)

        _check_intact(client, seeded)
        assert len(client.get_metric_history(seeded.run_id, "after")) == 1
        assert _integrity(seeded.path) == "ok"

    def test_files_turning_read_only_while_open(self, tmp_path: Path) -> None:
        """A file made immutable under an open connection fails, then recovers."""
        folder = tmp_path / "folder"
        folder.mkdir()
        seeded = _seed(folder)
        client = seeded.client()
        client.log_metric(seeded.run_id, "live", 0.0, step=0)
        # Not the -shm file: SQLite maps it into memory, and making it
        # immutable kills the process with SIGBUS, which no code can handle.
        files = [str(seeded.path), f"{seeded.path}-wal"]
        assert _run("chattr", "+i", *files).returncode == 0
        try:
            with pytest.raises(MlflowException, match="read-only") as caught:
                client.log_metric(seeded.run_id, "live", 1.0, step=1)
        finally:
            assert _run("chattr", "-i", *files).returncode == 0
        _check_clear(caught.value, seeded.path, "PERMISSION_DENIED")

        client.log_metric(seeded.run_id, "live", 2.0, step=2)

        live = client.get_metric_history(seeded.run_id, "live")
        assert [(m.step, m.value) for m in live] == [(0, 0.0), (2, 2.0)]
        _check_intact(client, seeded)


# A full disk and a file size limit -------------------------------------------


def _big_batch(step: int) -> list[Metric]:
    # MLflow's limit is 1000 metrics a batch; long keys fill the disk sooner.
    return [
        Metric(f"a_long_metric_name_to_fill_the_disk_{key:04d}", key + 0.5, 1, step)
        for key in range(1000)
    ]


def _fill(client: mlflow.MlflowClient, seeded: Seeded) -> tuple[int, MlflowException]:
    """Log big batches until the disk is full; return how many returned."""
    returned: list[int] = []

    def log_until_full() -> None:
        for step in range(1000):
            client.log_batch(seeded.run_id, metrics=_big_batch(step))
            returned.append(step)

    with pytest.raises(MlflowException, match="disk is full") as caught:
        log_until_full()
    return len(returned), caught.value


class TestFullDisk:
    @pytest.fixture
    def seeded(self, mount_tmpfs: Callable[[str, str], Path]) -> Seeded:
        return _seed(mount_tmpfs("small", "2m"))

    def test_a_full_disk_keeps_every_write_that_returned(self, seeded: Seeded) -> None:
        """The failing batch names the file; every batch before it is kept."""
        client = seeded.client()

        returned, error = _fill(client, seeded)

        _check_clear(error, seeded.path, "RESOURCE_EXHAUSTED")
        assert returned > 0
        key = _big_batch(0)[0].key
        steps = [m.step for m in client.get_metric_history(seeded.run_id, key)]
        assert sorted(steps) == list(range(returned))
        _check_intact(client, seeded)

    def test_a_new_project_on_a_full_disk_leaves_nothing_behind(
        self, seeded: Seeded
    ) -> None:
        """Creating a project on a full disk fails clearly and leaves no ghost."""
        client = seeded.client()
        _fill(client, seeded)

        with pytest.raises(MlflowException, match="disk is full") as caught:
            client.create_experiment("another")

        _check_clear(
            caught.value, seeded.directory / "another.db", "RESOURCE_EXHAUSTED"
        )
        assert client.get_experiment_by_name("another") is None
        _run("mount", "-o", "remount,size=16m", str(seeded.directory))
        assert client.get_experiment(client.create_experiment("another")).name == (
            "another"
        )

    def test_writes_resume_once_there_is_space(self, seeded: Seeded) -> None:
        """After the disk grows, the same client writes again."""
        client = seeded.client()
        returned, _ = _fill(client, seeded)

        done = _run("mount", "-o", "remount,size=16m", str(seeded.directory))
        assert done.returncode == 0, done.stderr
        client.log_batch(seeded.run_id, metrics=_big_batch(returned))

        key = _big_batch(0)[0].key
        assert len(client.get_metric_history(seeded.run_id, key)) == returned + 1
        _check_intact(client, seeded)
        assert _integrity(seeded.path) == "ok"


class TestFileSizeLimit:
    @pytest.mark.parametrize(
        ("phase", "limit"),
        # Below the 32 KiB -shm file that opening must create, and above it
        # (where the WAL, which starts empty, hits it as it grows).
        [("connect", 1000), ("commit", 256 * 1024)],
    )
    def test_a_disk_io_error_is_clear_and_loses_nothing(
        self, phase: str, limit: int, trackio_dir: Path, children: Children
    ) -> None:
        """A write() failing with EFBIG names the file; the client then recovers."""
        seeded = _seed(trackio_dir)
        child = children.start(
            "limited_writer.py", trackio_dir, seeded.run_id, limit, phase
        )
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        report = json.loads(out)

        assert report["error_code"] == "IO_ERROR", report
        assert str(seeded.path) in report["message"]
        assert "disk I/O error" in report["message"]
        assert len(report["message"]) < _MESSAGE_LIMIT
        assert "disk I/O error" in report["cause"]
        assert report["m0_kept"] == report["returned"]
        assert report["m0_after"] == report["returned"] + 1
        assert report["x_after"] == _POINTS
        assert (report["returned"] > 0) == (phase == "commit")
        _check_intact(seeded.client(), seeded)


# Damaged files ---------------------------------------------------------------


def _overwrite_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(b"not a database!!" * 6)


def _truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGES = {"header overwritten": _overwrite_header, "truncated": _truncate_to_half}


class TestDamagedFile:
    @pytest.fixture(params=list(DAMAGES))
    def damaged(self, request: pytest.FixtureRequest, trackio_dir: Path) -> Seeded:
        """A damaged project next to a healthy one; a backup of it is kept."""
        _seed(trackio_dir, "healthy")
        seeded = _seed(trackio_dir)
        shutil.copy(seeded.path, trackio_dir / "backup")
        DAMAGES[request.param](seeded.path)
        return seeded

    def test_the_damaged_file_is_named_with_its_cause(self, damaged: Seeded) -> None:
        """Reading a damaged project file says which file and what is wrong."""
        with pytest.raises(MlflowException, match="damaged or not an SQLite") as caught:
            damaged.client().get_metric_history(damaged.run_id, "x")
        _check_clear(caught.value, damaged.path, "DATA_LOSS")
        assert "Move it away or restore a backup" in caught.value.message

    def test_other_projects_are_untouched(self, damaged: Seeded) -> None:
        """The healthy project next to the damaged one keeps all its data."""
        healthy = damaged.directory / "healthy.db"
        reader = TrackioReader(damaged.directory)
        [record] = reader.run_records("healthy")
        values = reader.metric_values("healthy", record["id"], "x")
        assert [v["value"] for v in values] == [float(s) for s in range(_POINTS)]
        assert _integrity(healthy) == "ok"

    def test_a_restored_backup_is_read_by_the_same_client(
        self, damaged: Seeded
    ) -> None:
        """After the fix the message names, the same client reads and writes."""
        client = damaged.client()
        with pytest.raises(MlflowException, match="damaged"):
            client.get_metric_history(damaged.run_id, "x")
        for leftover in ("-wal", "-shm"):
            Path(f"{damaged.path}{leftover}").unlink(missing_ok=True)
        shutil.copy(damaged.directory / "backup", damaged.path)

        client.log_metric(damaged.run_id, "after", 1.0, step=0)

        _check_intact(client, damaged)
        assert _integrity(damaged.path) == "ok"


# Autolog ---------------------------------------------------------------------


def _fit_sklearn(lock: Callable[[], None]) -> Any:
    from sklearn.linear_model import LogisticRegression

    features, labels = _data()
    lock()
    return LogisticRegression().fit(features, labels)


def _train_xgboost(lock: Callable[[], None]) -> Any:
    import xgboost

    class LockAtThirdRound(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            if epoch == 2:
                lock()
            return False

    features, labels = _data()
    data = xgboost.DMatrix(features, label=labels)
    return xgboost.train(
        {"objective": "binary:logistic"},
        data,
        num_boost_round=10,
        evals=[(data, "train")],
        callbacks=[LockAtThirdRound()],
        verbose_eval=False,
    )


def _data() -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    features = generator.normal(size=(64, 4))
    return features, (features[:, 0] > 0).astype(int)


def _trained(model: Any) -> bool:
    if hasattr(model, "num_boosted_rounds"):
        return model.num_boosted_rounds() == 10
    return model.coef_.shape == (1, 4)


# The lock is taken before sklearn's fit (so creating the run fails) and in
# the middle of xgboost's training (so its metrics and end of run fail).
TRAININGS = {"sklearn": _fit_sklearn, "xgboost": _train_xgboost}


class TestAutologNeverBreaksTraining:
    @pytest.mark.parametrize("flavor", list(TRAININGS))
    def test_training_returns_a_model_and_a_warning_is_logged(
        self,
        flavor: str,
        trackio_dir: Path,
        children: Children,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A locked database under autolog costs the metrics, never the model."""
        # Outside MLflow's test mode, as users run: autolog swallows errors.
        monkeypatch.delenv("MLFLOW_AUTOLOGGING_TESTING", raising=False)
        monkeypatch.setenv(BUSY_TIMEOUT_ENV, "0.5")
        mlflow.MlflowClient(f"trackio://{trackio_dir}").create_experiment("trained")
        sdk.autolog(project="trained")
        holder = _Holder(children, trackio_dir / "trained.db", "sqlite")

        model = TRAININGS[flavor](holder.lock)
        holder.release()

        assert _trained(model)
        logged = capsys.readouterr().err
        assert f"Encountered unexpected error during {flavor} autologging" in logged
        assert f"{trackio_dir / 'trained.db'}: locked by another process" in logged
        TRAININGS[flavor](lambda: None)
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name("trained")
        runs = client.search_runs([experiment.experiment_id])
        assert "FINISHED" in [r.info.status for r in runs]
        assert _integrity(trackio_dir / "trained.db") == "ok"
        assert sys.modules.get("sdk") is sdk
