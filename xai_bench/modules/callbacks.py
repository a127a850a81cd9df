"""Callbacks that complete the run-folder contract."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl


class BestEpochTracker(pl.Callback):
    """Records the epoch whose validation loss was the best (the study's "saved epoch").

    Reads the same synced metric that ModelCheckpoint monitors, so the recorded epoch is the one
    of checkpoints/best.ckpt. Epochs are counted from 1, as in the study's grid.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        if math.isnan(score):
            return
        better = self.best_score is None or (
            score < self.best_score if self.mode == "min" else score > self.best_score
        )
        if better:
            self.best_score = score
            self.best_epoch = trainer.current_epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
