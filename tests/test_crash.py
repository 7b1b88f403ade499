"""A logging process killed with SIGKILL at a random moment loses no write.

A child logs in a loop and reports each step whose write returned; the test
kills it at a random moment, checks that every reported point reads back, and
resumes the same run in a new child for the next round. Set
``MLFLOW_TRACKIO_CRASH_SEED`` to replay the kill delays of a failing run.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from tests.trackio_reader import TrackioReader
from tests.workers.children import Children
from tests.workers.crash_logger import loss, pair

ROUNDS = 10
SEED = int(os.environ.get("MLFLOW_TRACKIO_CRASH_SEED", "20261204"))
# Kills land up to this long after the child's run is active: the loop logs
# a few hundred points a second, so rounds differ in how far they get.
_LONGEST_DELAY_S = 0.8
_START_TIMEOUT_S = 60


@dataclass
class _Round:
    """What one killed child printed."""

    run_id: str
    loss_steps: list[int] = field(default_factory=list)
    pair_steps: list[int] = field(default_factory=list)


def _drain(stream, into: list[str], started: threading.Event | None = None) -> None:
    for line in stream:
        into.append(line.strip())
        if started is not None and line.startswith("run "):
            started.set()
    if started is not None:
        started.set()


def _kill_at_random(
    children: Children, args: list[object], delay: float
) -> tuple[_Round, str]:
    """Run the logger, SIGKILL it `delay` s after its run is active."""
    child = children.start("crash_logger.py", *args)
    out: list[str] = []
    err: list[str] = []
    active = threading.Event()
    readers = [
        threading.Thread(target=_drain, args=(child.stdout, out, active)),
        threading.Thread(target=_drain, args=(child.stderr, err)),
    ]
    for reader in readers:
        reader.start()
    assert active.wait(_START_TIMEOUT_S), "the logger did not start its run"
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    for reader in readers:
        reader.join(timeout=30)
    stderr = "\n".join(err)
    assert child.returncode == -signal.SIGKILL, f"logger died by itself:\n{stderr}"
    reported = _Round(out[0].split()[1])
    for line in out[1:]:
        kind, step = line.split()
        getattr(reported, f"{kind}_steps").append(int(step))
    return reported, stderr


def _steps(client: mlflow.MlflowClient, run_id: str, key: str, first: int) -> list:
    points = client.get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in points if m.step >= first)


def _check_round(
    client: mlflow.MlflowClient, reported: _Round, first: int
) -> list[int]:
    """Check one round's points against what the child reported; return steps."""
    stored = _steps(client, reported.run_id, "loss", first)
    stored_steps = [step for step, _ in stored]
    # One write may have committed in the instant between its return and the
    # child printing it; nothing else may be there that was not reported.
    assert reported.loss_steps == list(range(first, first + len(reported.loss_steps)))
    assert stored_steps in (
        reported.loss_steps,
        list(range(first, first + len(reported.loss_steps) + 1)),
    )
    assert stored == [(step, loss(step)) for step in stored_steps]
    acc = _steps(client, reported.run_id, "acc", first)
    lr = _steps(client, reported.run_id, "lr", first)
    # Both keys of a batch are one transaction: both are there, or neither.
    assert [step for step, _ in acc] == [step for step, _ in lr]
    assert set(reported.pair_steps) <= {step for step, _ in acc}
    assert {step for step, _ in acc} <= set(stored_steps)
    assert acc == [(step, pair(step)["acc"]) for step, _ in acc]
    return stored_steps


def _integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


class TestKillAndRecover:
    def test_reported_writes_survive_sigkill_and_the_run_resumes(
        self, children: Children, trackio_dir: Path
    ) -> None:
        """Ten random SIGKILLs lose no returned write; a new process resumes."""
        rng = random.Random(SEED)
        client = mlflow.MlflowClient(f"trackio://{trackio_dir}")
        experiment_id = client.create_experiment("crash")
        print(f"crash test seed {SEED}")
        run_id, first, passed = "-", 0, 0
        for number in range(ROUNDS):
            delay = rng.uniform(0.0, _LONGEST_DELAY_S)
            args = [trackio_dir, experiment_id, run_id, first]
            reported, _ = _kill_at_random(children, args, delay)
            context = f"round {number} (seed {SEED}, kill after {delay:.3f} s)"
            try:
                steps = _check_round(client, reported, first)
            except AssertionError as exc:
                raise AssertionError(f"{context}, {passed} passed: {exc}") from exc
            passed += 1
            print(f"{context}: {len(steps)} points kept, all reported ones")
            run_id = reported.run_id
            first = steps[-1] + 1 if steps else first
        print(f"kill-and-recover rounds passed: {passed}/{ROUNDS}")

        client.set_terminated(run_id)

        run = client.get_run(run_id)
        assert (run.info.status, run.info.end_time is not None) == ("FINISHED", True)
        assert [s for s, _ in _steps(client, run_id, "loss", 0)] == list(range(first))
        assert _integrity(trackio_dir / "crash.db") == "ok"
        values = TrackioReader(trackio_dir).metric_values("crash", run_id, "loss")
        assert sorted(v["step"] for v in values) == list(range(first))
