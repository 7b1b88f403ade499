"""Every example runs on CPU as its own process, and its runs read back.

Each script runs with a fresh ``TRACKIO_DIR``; what it logged is then read
through MLflow's client on ``trackio:///<dir>`` and through Trackio's own
reader, so an example that prints the right thing but logs nothing fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from tests.trackio_reader import TrackioReader

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PARENT_TAG = "mlflow.parentRunId"


def run_example(
    script: str, trackio_dir: Path, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run one example script to completion and return what it printed."""
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=cwd,
        env={**os.environ, "TRACKIO_DIR": str(trackio_dir), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def client_for(trackio_dir: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"trackio://{trackio_dir.as_posix()}")


def runs_of(trackio_dir: Path, project: str) -> list[Any]:
    client = client_for(trackio_dir)
    experiment = client.get_experiment_by_name(project)
    assert experiment is not None, f"no experiment {project!r}"
    return client.search_runs([experiment.experiment_id])


@dataclass(frozen=True)
class SingleRun:
    """What one example that logs a single run must leave behind."""

    script: str
    project: str
    params: dict[str, str]
    metric: str
    steps: list[int]
    env: dict[str, str] = field(default_factory=dict)
    run_name: str | None = None


SINGLE_RUN_EXAMPLES = [
    SingleRun(
        "quickstart.py",
        "quickstart",
        {"n_estimators": "20", "max_depth": "3"},
        "training_accuracy_score",
        [0],
    ),
    SingleRun(
        "lightning_example.py",
        "lightning",
        {"lr": "0.1", "epochs": "5"},
        "val_loss",
        [0, 1, 2, 3, 4],
    ),
    SingleRun(
        "xgboost_example.py",
        "xgboost",
        {"max_depth": "3", "eta": "0.3"},
        "valid-logloss",
        list(range(20)),
    ),
    SingleRun(
        "lightgbm_example.py",
        "lightgbm",
        {"num_leaves": "7", "learning_rate": "0.1"},
        "valid-binary_logloss",
        list(range(20)),
    ),
    SingleRun(
        "fluent_example.py",
        "fluent",
        {"learning_rate": "0.05", "optimizer": "sgd"},
        "loss",
        list(range(10)),
        run_name="by-hand",
    ),
    SingleRun(
        "transformers_example.py",
        "transformers",
        {"learning_rate": "0.001", "num_train_epochs": "2"},
        "loss",
        list(range(2, 17, 2)),
        # What a job would export; the script only fills in missing values.
        env={
            "MLFLOW_TRACKING_URI": "trackio://",
            "MLFLOW_EXPERIMENT_NAME": "transformers",
            "HF_HUB_OFFLINE": "1",
        },
        run_name="tiny-bert",
    ),
]


class TestSingleRunExamples:
    @pytest.mark.parametrize(
        "expected", SINGLE_RUN_EXAMPLES, ids=[e.script for e in SINGLE_RUN_EXAMPLES]
    )
    def test_example_logs_its_run(self, expected, trackio_dir, tmp_path):
        """The script exits 0 and its params and metric history are in both readers."""
        completed = run_example(expected.script, trackio_dir, tmp_path, **expected.env)

        [run] = runs_of(trackio_dir, expected.project)
        assert run.info.status == "FINISHED"
        if expected.run_name is not None:
            assert run.info.run_name == expected.run_name
        assert run.info.run_name in completed.stdout
        assert expected.params.items() <= run.data.params.items()
        history = client_for(trackio_dir).get_metric_history(
            run.info.run_id, expected.metric
        )
        assert [point.step for point in history] == expected.steps
        trackio_points = TrackioReader(trackio_dir).metric_values(
            expected.project, run.info.run_id, expected.metric
        )
        assert [p["value"] for p in trackio_points] == [p.value for p in history]
        assert TrackioReader(trackio_dir).projects() == [expected.project]


@dataclass(frozen=True)
class Search:
    """An example whose runs are one parent and its child runs."""

    script: str
    project: str
    children: int
    parent_param: str
    parent_name: str | None = None


SEARCH_EXAMPLES = [
    Search("sklearn_example.py", "sklearn", 3, "best_logisticregression__C"),
    Search("nested_search_example.py", "nested-search", 3, "best_learning_rate"),
]


class TestSearchExamples:
    @pytest.mark.parametrize(
        "expected", SEARCH_EXAMPLES, ids=[e.script for e in SEARCH_EXAMPLES]
    )
    def test_children_are_runs_grouped_under_the_parent(
        self, expected, trackio_dir, tmp_path
    ):
        """Each child is its own run in both readers, grouped by the parent's name."""
        completed = run_example(expected.script, trackio_dir, tmp_path)

        runs = runs_of(trackio_dir, expected.project)
        [parent] = [run for run in runs if PARENT_TAG not in run.data.tags]
        children = [run for run in runs if PARENT_TAG in run.data.tags]
        assert len(children) == expected.children
        assert {child.data.tags[PARENT_TAG] for child in children} == {
            parent.info.run_id
        }
        assert expected.parent_param in parent.data.params
        assert parent.info.run_name in completed.stdout

        reader = TrackioReader(trackio_dir)
        records = reader.run_records(expected.project)
        assert sorted(r["id"] for r in records) == sorted(r.info.run_id for r in runs)
        configs = reader.run_configs(expected.project)
        assert "_Group" not in configs[parent.info.run_id]
        for child in children:
            assert configs[child.info.run_id]["_Group"] == parent.info.run_name

    def test_nested_search_children_log_their_own_curves(self, trackio_dir, tmp_path):
        """Each candidate's loss curve stays in its own child run."""
        run_example("nested_search_example.py", trackio_dir, tmp_path)

        client = client_for(trackio_dir)
        runs = runs_of(trackio_dir, "nested-search")
        curves = {
            run.data.params["learning_rate"]: client.get_metric_history(
                run.info.run_id, "loss"
            )
            for run in runs
            if PARENT_TAG in run.data.tags
        }
        assert sorted(curves) == ["0.01", "0.05", "0.2"]
        for history in curves.values():
            assert [point.step for point in history] == list(range(15))
        assert curves["0.2"][-1].value < curves["0.01"][-1].value


class TestNotebook:
    def test_quickstart_notebook_runs_top_to_bottom(self, trackio_dir, tmp_path):
        """Every cell of the notebook runs, and its two runs land in Trackio."""
        notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
        manager = KernelManager(
            kernel_name="mlflow-trackio-tests",
            kernel_spec_manager=KernelSpecManager(
                kernel_dirs=[str(_kernel_spec_for_this_python(tmp_path))]
            ),
        )
        NotebookClient(
            notebook,
            km=manager,
            timeout=180,
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()

        runs = runs_of(trackio_dir, "notebook-quickstart")
        by_name = {run.info.run_name: run for run in runs}
        assert len(by_name) == 2
        assert by_name["by-hand"].data.params == {"learning_rate": "0.1", "epochs": "5"}
        [autologged] = [run for name, run in by_name.items() if name != "by-hand"]
        assert autologged.data.params["max_depth"] == "3"
        table = notebook.cells[-2].outputs[0]["data"]["text/plain"]
        assert "by-hand" in table
        assert autologged.info.run_name in table


def _kernel_spec_for_this_python(directory: Path) -> Path:
    """Write a kernelspec that starts this interpreter, wherever the venv is."""
    kernels = directory / "kernels"
    spec = kernels / "mlflow-trackio-tests"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return kernels
