"""Each framework trains a tiny model on CPU under `sdk.autolog()`.

Every test runs in MLflow's autologging test mode, where an error that
autolog would normally swallow fails the test, once with the SDK's lean
defaults and once with MLflow's defaults (models logged too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

import sdk
from tests.trackio_reader import TrackioReader

MODES = {
    "sdk-defaults": {},
    "mlflow-defaults": {
        "log_models": True,
        "log_input_examples": False,
        "log_model_signatures": True,
    },
}


@pytest.fixture(params=list(MODES), autouse=True)
def autologged(request, monkeypatch: pytest.MonkeyPatch, trackio_dir: Path):
    """Enable autolog in MLflow's test mode, in one of the two settings."""
    monkeypatch.setenv("MLFLOW_AUTOLOGGING_TESTING", "true")
    sdk.autolog(project="frameworks", **MODES[request.param])
    yield request.param
    sdk.autolog(disable=True)


def _data(rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    features = generator.normal(size=(rows, 4)).astype("float32")
    labels = (features[:, 0] + features[:, 1] > 0).astype("int64")
    return features, labels


def _only_run(client: mlflow.MlflowClient) -> Any:
    experiment = client.get_experiment_by_name("frameworks")
    [run] = client.search_runs([experiment.experiment_id])
    return run


def _check_finished_in_both_readers(trackio_dir: Path) -> Any:
    client = mlflow.MlflowClient()
    run = _only_run(client)
    assert run.info.status == "FINISHED"
    reader = TrackioReader(trackio_dir)
    assert "frameworks" in reader.projects()
    assert [r["id"] for r in reader.run_records("frameworks")] == [run.info.run_id]
    return run


def _history(key: str, run: Any) -> list[tuple[int, float]]:
    points = mlflow.MlflowClient().get_metric_history(run.info.run_id, key)
    return [(m.step, m.value) for m in points]


def _trackio_history(trackio_dir: Path, key: str, run: Any) -> list[tuple[int, float]]:
    values = TrackioReader(trackio_dir).metric_values(
        "frameworks", run.info.run_id, key
    )
    return [(v["step"], v["value"]) for v in values]


def _assert_points(
    actual: list[tuple[int, float]], expected: list[tuple[int, float]]
) -> None:
    assert [step for step, _ in actual] == [step for step, _ in expected]
    assert [value for _, value in actual] == pytest.approx(
        [value for _, value in expected]
    )


class TestScikitLearn:
    def test_fit_logs_params_and_training_metrics(self, trackio_dir, autologged):
        """LogisticRegression.fit logs its params and training scores."""
        from sklearn.linear_model import LogisticRegression

        features, labels = _data()
        LogisticRegression(C=0.5, max_iter=50).fit(features, labels)
        run = _check_finished_in_both_readers(trackio_dir)
        assert run.data.params["C"] == "0.5"
        assert run.data.params["max_iter"] == "50"
        assert 0.5 <= run.data.metrics["training_accuracy_score"] <= 1.0
        assert _trackio_history(trackio_dir, "training_accuracy_score", run) == (
            _history("training_accuracy_score", run)
        )
        config = TrackioReader(trackio_dir).run_configs("frameworks")[run.info.run_id]
        assert config["C"] == "0.5"


class TestXGBoost:
    def test_train_logs_every_round(self, trackio_dir, autologged):
        """xgb.train logs its params and one point per boosting round."""
        import xgboost

        features, labels = _data()
        train = xgboost.DMatrix(features[:48], label=labels[:48])
        valid = xgboost.DMatrix(features[48:], label=labels[48:])
        results: dict[str, Any] = {}
        xgboost.train(
            {"max_depth": 2, "eta": 0.3, "objective": "binary:logistic"},
            train,
            num_boost_round=5,
            evals=[(train, "train"), (valid, "valid")],
            evals_result=results,
        )
        run = _check_finished_in_both_readers(trackio_dir)
        assert run.data.params["max_depth"] == "2"
        expected = list(enumerate(results["valid"]["logloss"]))
        _assert_points(_history("valid-logloss", run), expected)
        _assert_points(_trackio_history(trackio_dir, "valid-logloss", run), expected)


class TestLightGBM:
    def test_train_logs_every_round(self, trackio_dir, autologged):
        """lgb.train logs its params and one point per boosting round."""
        import lightgbm

        features, labels = _data()
        train = lightgbm.Dataset(features[:48], label=labels[:48])
        valid = lightgbm.Dataset(features[48:], label=labels[48:], reference=train)
        results: dict[str, Any] = {}
        lightgbm.train(
            {"objective": "binary", "num_leaves": 4, "verbose": -1},
            train,
            num_boost_round=5,
            valid_sets=[valid],
            valid_names=["valid"],
            callbacks=[lightgbm.record_evaluation(results)],
        )
        run = _check_finished_in_both_readers(trackio_dir)
        assert run.data.params["num_leaves"] == "4"
        expected = list(enumerate(results["valid"]["binary_logloss"]))
        _assert_points(_history("valid-binary_logloss", run), expected)
        _assert_points(
            _trackio_history(trackio_dir, "valid-binary_logloss", run), expected
        )


class TestPyTorchLightning:
    def test_fit_logs_params_and_epoch_metrics(self, trackio_dir, autologged):
        """Trainer.fit logs the optimizer's params and one point per epoch."""
        import pytorch_lightning as pl
        import torch

        class Tiny(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.layer = torch.nn.Linear(4, 2)

            def training_step(self, batch, batch_index):
                features, labels = batch
                loss = torch.nn.functional.cross_entropy(self.layer(features), labels)
                self.log("train_loss", loss, on_step=False, on_epoch=True)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        features, labels = _data()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(
                torch.from_numpy(features), torch.from_numpy(labels)
            ),
            batch_size=16,
        )
        trainer = pl.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), loader)
        run = _check_finished_in_both_readers(trackio_dir)
        assert run.data.params["epochs"] == "3"
        assert run.data.params["lr"] == "0.1"
        history = _history("train_loss", run)
        assert [step for step, _ in history] == [0, 1, 2]
        assert history[-1][1] == pytest.approx(
            float(trainer.callback_metrics["train_loss"])
        )
        assert _trackio_history(trackio_dir, "train_loss", run) == history
