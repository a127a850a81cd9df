"""ClassifierModule on its own: metrics, class weights, safe checkpoints, best-epoch record."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from xai_bench.modules import (
    BestEpochTracker,
    ClassifierModule,
    CosineSchedule,
    build_optimizer,
)
from xai_bench.utils.class_weights import balanced_weights
from xai_bench.utils.errors import ConfigError


class _Blobs(Dataset):
    """Linearly separable toy images: class 1 is brighter."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.images = (torch.randn(n, 3, 16, 16, generator=g) * 0.5
                       + self.labels.view(-1, 1, 1, 1).float())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))


def _module(**kw) -> ClassifierModule:
    return ClassifierModule(
        _net(), optimizer=partial(build_optimizer, name="adamw", lr=5e-2),
        scheduler=CosineSchedule(interval="epoch"), num_classes=2, **kw,
    )


def _fit(tmp_path: Path, module: ClassifierModule, epochs: int = 4) -> pl.Trainer:
    from pytorch_lightning.callbacks import ModelCheckpoint

    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor="val/loss",
                                   save_last=True),
                   BestEpochTracker()],
    )
    trainer.fit(module, DataLoader(_Blobs(128, 0), batch_size=32, shuffle=True),
                DataLoader(_Blobs(64, 1), batch_size=32))
    return trainer


def test_fit_learns_and_logs_every_metric(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, _module())
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "val/balanced_acc",
                "val/f1_macro", "val/auroc"):
        assert key in metrics, key
    assert float(metrics["val/acc"]) > 0.9
    assert float(metrics["val/auroc"]) > 0.95


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, _module(class_weights=[1.0, 2.0]), epochs=2)
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(tmp_path / "ckpt" / name, map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["class_weights"] == [1.0, 2.0]
    tracker = next(c for c in trainer.callbacks if isinstance(c, BestEpochTracker))
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", map_location="cpu", weights_only=True)
    assert tracker.best_epoch == best["epoch"] + 1


def test_class_weights_enter_the_loss() -> None:
    module = _module(class_weights=[1.0, 3.0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))
    assert module.criterion(logits, labels) == pytest.approx(expected.item())
    with pytest.raises(ConfigError, match="3 entries"):
        _module(class_weights=[1.0, 1.0, 1.0])


def test_balanced_weights_follow_inverse_frequency() -> None:
    w = balanced_weights(np.array([0, 0, 0, 1]), 2)
    assert w == pytest.approx([4 / 6, 4 / 2])
    with pytest.raises(ConfigError, match=r"\[1\]"):
        balanced_weights(np.array([0, 0]), 2)
