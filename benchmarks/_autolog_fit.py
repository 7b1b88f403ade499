"""Autologging a PyTorch Lightning fit: how much of the fit the store costs.

The model is one linear layer on four features, so a training step takes well
under a millisecond and the tracking share of the fit is as visible as it gets.
Torch and Lightning are imported only when this workload runs.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from benchmarks._backends import (
    FILE,
    NO_TRACKING,
    NOOP,
    SQLITE,
    TRACKIO,
    Backend,
    Session,
)
from benchmarks._workloads import Sizes, Workload

# What `sdk.autolog()` asks of MLflow for Lightning, plus one metric point a
# step. Checkpoints are off: they are artifact files, the same for every store.
AUTOLOG_SETTINGS: dict[str, Any] = {
    "log_every_n_step": 1,
    "log_models": False,
    "log_model_signatures": False,
    "checkpoint": False,
    "silent": True,
}
_BATCH_SIZE = 4
_FEATURES = 4


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _training_parts(steps: int) -> tuple[Any, Any, Any]:
    """Return (trainer, model, data loader) for a fit of `steps` steps."""
    import pytorch_lightning as pl
    import torch

    class TinyRegressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(_FEATURES, 1)

        def training_step(self, batch, batch_index):
            features, target = batch
            loss = torch.nn.functional.mse_loss(self.layer(features), target)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    features = torch.randn(steps * _BATCH_SIZE, _FEATURES)
    target = features.sum(dim=1, keepdim=True)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, target), batch_size=_BATCH_SIZE
    )
    trainer = pl.Trainer(
        max_epochs=1,
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return trainer, TinyRegressor(), loader


class AutologLightningFit(Workload):
    """`Trainer.fit` with `mlflow.pytorch.autolog` logging every step."""

    def __init__(self, sizes: Sizes) -> None:
        self.steps = sizes.autolog_steps
        super().__init__(
            key="autolog",
            title=f"autolog of a PyTorch Lightning fit, {self.steps:,} steps",
            unit="s",
            backends=(NO_TRACKING, NOOP, TRACKIO, SQLITE, FILE),
            notes=[
                "mlflow.pytorch.autolog(log_every_n_step=1, log_models=False, "
                "log_model_signatures=False, checkpoint=False); a 4-feature "
                "linear model, batch size 4, one CPU thread. 'no autolog' is "
                "the same fit without MLflow. MLflow's own BatchMetricsLogger "
                "batches steps to keep logging under a tenth of training time."
            ],
        )
        self._warmed_up = False

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        import torch

        torch.set_num_threads(1)
        _quiet_lightning()
        self._warm_up()
        uri = None
        if backend is NO_TRACKING:
            mlflow.pytorch.autolog(disable=True)
        else:
            uri = session.new_store_uri(backend)
            mlflow.set_tracking_uri(uri)
            experiment_id = mlflow.set_experiment("autolog").experiment_id
            mlflow.pytorch.autolog(**AUTOLOG_SETTINGS)
        trainer, model, loader = _training_parts(self.steps)
        gc.collect()
        started = time.perf_counter()
        trainer.fit(model, loader)
        elapsed = time.perf_counter() - started
        if uri is not None:
            self._check_logged(uri, experiment_id, backend)
            session.release_store(uri)
        mlflow.pytorch.autolog(disable=True)
        return elapsed

    def _warm_up(self) -> None:
        # Lightning's first fit in a process pays one-off set-up costs.
        if not self._warmed_up:
            mlflow.pytorch.autolog(disable=True)
            trainer, model, loader = _training_parts(20)
            trainer.fit(model, loader)
            self._warmed_up = True

    def _check_logged(self, uri: str, experiment_id: str, backend: Backend) -> None:
        client = MlflowClient(uri)
        (run,) = client.search_runs([experiment_id])
        found = len(client.get_metric_history(run.info.run_id, "train_loss"))
        if found != self.steps or run.info.status != "FINISHED":
            raise RuntimeError(
                f"{backend.label}: autolog logged {found} of {self.steps} steps, "
                f"run {run.info.status}."
            )
