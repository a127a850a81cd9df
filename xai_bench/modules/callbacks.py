"""Callbacks and plugins that complete the run-folder contract: the best epoch, a run that
fails loudly when its loss diverges, checkpoint files that are never left half-written."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from xai_bench.utils.errors import XaiBenchError


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


class NonFiniteLossError(XaiBenchError):
    """The training or validation loss became NaN or infinite: the run stopped and failed."""


def _learning_rates(trainer: pl.Trainer) -> str:
    rates = dict.fromkeys(f"{group['lr']:g}" for opt in trainer.optimizers
                          for group in opt.param_groups)
    return ", ".join(rates) or "unknown"


def _saved_checkpoints(trainer: pl.Trainer) -> str:
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) if callback is not None else None
    names = (sorted(p.name for p in Path(folder).glob("*.ckpt"))
             if folder and Path(folder).is_dir() else [])
    if not names:
        return "no checkpoint had been saved yet"
    return f"the checkpoints saved before are kept ({', '.join(names)} in {folder})"


class StopOnNonFiniteLoss(pl.Callback):
    """Stops the fit with NonFiniteLossError when the loss becomes NaN or infinite.

    A diverged run otherwise trains on with NaN weights and ends "successfully" with chance
    accuracy and metrics.json written. The error is raised in the same hook on every
    rank (under DDP the training check is reduced over ranks: one rank's NaN stops them all, and no
    rank waits in a collective the others left), before ModelCheckpoint's hook of that step runs
    (Lightning orders checkpoint callbacks last), so no checkpoint of NaN weights replaces the
    ones saved before. Lightning's EarlyStopping(check_finite=True) would stop without failing.
    """

    def __init__(self, monitor: str = "val/loss", check_train: bool = True) -> None:
        self.monitor = monitor
        self.check_train = check_train

    def _fail(self, trainer: pl.Trainer, what: str, value: str) -> None:
        when = (
            "in the sanity check before training"
            if trainer.sanity_checking
            else f"at epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
        )
        raise NonFiniteLossError(
            f"the {what} loss became {value} {when} "
            f"(current learning rate {_learning_rates(trainer)}): the "
            f"run was stopped and failed; {_saved_checkpoints(trainer)}. Try a lower optimizer.lr "
            "(e.g. 10x lower), gradient clipping (trainer.gradient_clip_val=1.0) or "
            "trainer.precision=32-true."
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int
    ) -> None:
        if not self.check_train:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad_here = not bool(torch.isfinite(loss.detach()).all())
        bad = bad_here
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad_here, all=False)
        if bad_here:
            self._fail(trainer, "training", f"{float(loss.detach().float().sum()):g}")
        if bad:
            self._fail(trainer, "training", "non-finite in another process (DDP rank)")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        # logged with sync_dist: the same value on every rank, so every rank stops here
        score = float(value)
        if not math.isfinite(score):
            self._fail(trainer, f"validation ({self.monitor})", f"{score:g}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint saves that never leave a truncated file.

    Lightning's own save (lightning_fabric `_atomic_save` through an fsspec transaction) writes
    to the system temp folder and then moves the file into the run folder: across filesystems
    that move is a copy, and a full disk left last.ckpt truncated, which then blocked the
    automatic resume. Here the checkpoint goes to a temporary file beside the target, is flushed
    to disk and renamed over it (xai_bench.tracking.run_folder.atomic_open); a full disk keeps
    the previous checkpoint and raises DiskFullError (one line: file, folder, free space).
    Remote paths (s3://, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        from xai_bench.tracking.run_folder import atomic_open

        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)
