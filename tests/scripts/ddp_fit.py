"""A two-process DDP fit (gloo, CPU) under `sdk.autolog()`, run by the tests.

Lightning's DDP launcher runs this script once per rank.
"""

import pytorch_lightning as pl
import torch

import sdk


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_index):
        features, labels = batch
        loss = torch.nn.functional.cross_entropy(self.layer(features), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    sdk.autolog(project="ddp")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 4, generator=generator)
    labels = (features[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=8
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), loader)


if __name__ == "__main__":
    main()
