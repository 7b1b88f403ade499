"""Train a Hugging Face model with ``report_to="mlflow"`` into Trackio, no `sdk` call.

Run it with ``python examples/transformers_example.py`` (``pip install -e
".[transformers]"``). Transformers' own ``MLflowCallback`` reads
``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``; with the URI set to
``trackio://`` the installed package's tracking store takes over, so the
callback's params and per-step metrics land in Trackio. In a job you would
export the two variables; this script sets them if they are missing. The
model is a tiny BERT built from a config, so nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile

# Before the imports: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
os.environ.setdefault("MLFLOW_TRACKING_URI", "trackio://")
os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mlflow  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)


class RandomTokens(torch.utils.data.Dataset):
    """Random token ids; the label says whether token 1 appears."""

    def __init__(self, rows: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 100, (rows, 16), generator=generator)
        self.ids[: rows // 2, 0] = 1
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


def main() -> None:
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with tempfile.TemporaryDirectory() as output_dir:
        arguments = TrainingArguments(
            output_dir=output_dir,
            run_name="tiny-bert",
            report_to="mlflow",
            num_train_epochs=2,
            per_device_train_batch_size=16,
            learning_rate=1e-3,
            logging_steps=2,
            eval_strategy="epoch",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=arguments,
            train_dataset=RandomTokens(128, seed=0),
            eval_dataset=RandomTokens(32, seed=1),
        )
        trainer.train()

    run = mlflow.last_active_run()
    params, metrics = run.data.params, run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    print(f"Run {run.info.run_name} logged to {mlflow.get_tracking_uri()}")
    print(f"  {len(params)} params, learning_rate {params['learning_rate']}")
    print(f"  {len(history)} loss points, eval_loss {metrics['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
