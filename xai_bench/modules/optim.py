"""Optimizer and schedule factories that the `optimizer/` and `scheduler/` configs target.

One signature for every optimizer lets a grid row (lr, momentum, weight decay) apply to any
optimizer choice: for Adam/AdamW, `momentum` is beta1, as the study's table calls it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from xai_bench.utils.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
INTERVALS = ("epoch", "step")
log = logging.getLogger(__name__)


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict],
    name: str,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    beta2: float = 0.999,
    nesterov: bool = False,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    if lr <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}.")
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=(momentum, beta2), weight_decay=weight_decay, eps=eps)
    raise ConfigError(f"optimizer.name={name!r} is not one of {', '.join(OPTIMIZERS)}.")


def build_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int = 0,
    eta_min: float = 0.0,
    interval: str = "epoch",
) -> LRScheduler:
    """Linear warm-up for `warmup` units, then cosine from the base lr to `eta_min` at `total`.

    `total` is the number of epochs (interval=epoch, T_max as in the study) or optimizer steps;
    the caller passes it, so the schedule always ends exactly when training does.
    """
    if interval not in INTERVALS:
        raise ConfigError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}.")
    if total < 1 or warmup < 0:
        raise ConfigError(f"scheduler needs total >= 1 and warmup >= 0, "
                          f"got warmup={warmup}, total={total}.")
    if warmup >= total:
        # e.g. the synthetic default's 1 warm-up epoch with trainer.max_epochs=1:
        # shorten, don't fail
        log.warning("scheduler.warmup=%d >= %d %ss of training: warm-up shortened to %d",
                    warmup, total, interval, total - 1)
        warmup = total - 1
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(i: int, base_lr: float) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        progress = (i - warmup) / max(total - warmup, 1)
        floor = eta_min / base_lr if base_lr > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    lambdas = [lambda i, b=b: factor(i, b) for b in base_lrs]
    return LambdaLR(optimizer, lr_lambda=lambdas)


class CosineSchedule:
    """conf/scheduler/cosine.yaml: `build_cosine_schedule` once the length of training is known.

    The module asks a schedule two things: its `interval` (epoch | step: what one unit is, so the
    module passes max epochs or the estimated optimizer steps as `total`), and the schedule
    itself for an optimizer (`schedule(optimizer, total)`). A mistyped setting fails when the
    config is built, before any file is written.
    """

    def __init__(self, interval: str = "epoch", warmup: int = 0, eta_min: float = 0.0) -> None:
        if interval not in INTERVALS:
            raise ConfigError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}.")
        self.interval = interval
        self.warmup = warmup
        self.eta_min = eta_min

    def __call__(self, optimizer: torch.optim.Optimizer, total: int) -> LRScheduler:
        return build_cosine_schedule(optimizer, total, self.warmup, self.eta_min, self.interval)

    def __repr__(self) -> str:
        return (f"CosineSchedule(interval={self.interval!r}, warmup={self.warmup}, "
                f"eta_min={self.eta_min})")
