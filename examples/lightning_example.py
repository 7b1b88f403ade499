"""Autolog a PyTorch Lightning `Trainer.fit` into Trackio.

Run it with ``python examples/lightning_example.py`` (``pip install -e
".[lightning]"``, PyTorch first for its CPU build). MLflow's PyTorch autolog
records the optimizer's params and every metric the module logs with
``self.log``, one point per epoch, in project "lightning".
"""

from __future__ import annotations

import mlflow
import pytorch_lightning as pl
import torch

import sdk

PROJECT = "lightning"


class TinyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 2)

    def training_step(self, batch, batch_index):
        return self._loss(batch, "train_loss")

    def validation_step(self, batch, batch_index):
        return self._loss(batch, "val_loss")

    def _loss(self, batch, name: str) -> torch.Tensor:
        features, labels = batch
        loss = torch.nn.functional.cross_entropy(self.layer(features), labels)
        self.log(name, loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(rows: int, seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, 8, generator=generator)
    labels = (features[:, 0] > 0).long()
    dataset = torch.utils.data.TensorDataset(features, labels)
    return torch.utils.data.DataLoader(dataset, batch_size=32)


def main() -> None:
    sdk.autolog(project=PROJECT)
    torch.manual_seed(0)

    trainer = pl.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyClassifier(), loader(256, seed=0), loader(64, seed=1))

    run = mlflow.last_active_run()
    sdk.autolog(disable=True)
    print(f"Run {run.info.run_name} ({run.info.run_id}) in project {PROJECT}:")
    print(f"  params: lr={run.data.params['lr']}, epochs={run.data.params['epochs']}")
    print(f"  val_loss after the last epoch: {run.data.metrics['val_loss']:.4f}")


if __name__ == "__main__":
    main()
