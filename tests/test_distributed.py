"""Distributed training under `sdk.autolog()` gives one run, not one per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

import sdk
from sdk import _autolog
from tests.trackio_reader import TrackioReader

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


class TestDistributedRank:
    @pytest.mark.parametrize(
        ("environ", "rank"),
        [
            ({}, 0),
            ({"RANK": "0", "LOCAL_RANK": "0"}, 0),
            ({"LOCAL_RANK": "1"}, 1),
            ({"RANK": "3"}, 3),
            ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1),
        ],
    )
    def test_rank_from_launcher_variables(self, monkeypatch, environ, rank) -> None:
        """The rank comes from the variables torchrun and Lightning set."""
        for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        assert _autolog._distributed_rank() == rank

    @pytest.mark.parametrize(("local_rank", "patched"), [("0", True), ("1", False)])
    def test_only_rank_zero_turns_on_mlflow_autolog(
        self, monkeypatch, local_rank: str, patched: bool
    ) -> None:
        """Rank 0 patches the frameworks; rank 1 only points MLflow at Trackio."""
        import sklearn  # noqa: F401 - autolog patches only imported frameworks
        from mlflow.utils.autologging_utils import autologging_is_disabled

        monkeypatch.setenv("LOCAL_RANK", local_rank)
        sdk.autolog()
        assert sdk.is_autolog_enabled()
        assert mlflow.get_tracking_uri() == "trackio://"
        assert autologging_is_disabled("sklearn") is not patched


class TestLightningDDP:
    def test_two_process_fit_logs_one_run(self, trackio_dir: Path) -> None:
        """A gloo DDP fit on two CPU processes writes exactly one run."""
        environ = {**os.environ, "TRACKIO_DIR": str(trackio_dir)}
        subprocess.run(
            [sys.executable, str(SCRIPT)],
            env=environ,
            check=True,
            capture_output=True,
            timeout=300,
        )
        client = mlflow.MlflowClient("trackio://")
        experiment = client.get_experiment_by_name("ddp")
        [run] = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [0, 1, 2]
        assert run.data.params["epochs"] == "3"
        records = TrackioReader(trackio_dir).run_records("ddp")
        assert [r["id"] for r in records] == [run.info.run_id]
