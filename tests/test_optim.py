"""Optimizer factory (beta1 = momentum for Adam) and the cosine schedule (T_max = epochs)."""

from __future__ import annotations

import math

import pytest
import torch

from xai_bench.modules import build_cosine_schedule, build_optimizer
from xai_bench.utils.errors import ConfigError


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def test_adam_momentum_is_beta1() -> None:
    opt = build_optimizer(_params(), name="adam", lr=1e-5, momentum=0.9, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["weight_decay"] == 1e-4


def test_sgd_and_adamw() -> None:
    sgd = build_optimizer(_params(), name="sgd", lr=0.1, momentum=0.3)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.3
    adamw = build_optimizer(_params(), name="adamw", lr=1e-3, momentum=0.8)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"][0] == 0.8


def test_bad_optimizer_values_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="rmsprop"):
        build_optimizer(_params(), name="rmsprop", lr=0.1)
    with pytest.raises(ConfigError, match="lr"):
        build_optimizer(_params(), name="sgd", lr=0.0)


def test_cosine_matches_torch_cosine_annealing() -> None:
    """Without warm-up the schedule is torch's CosineAnnealingLR with T_max = epochs."""
    ours = build_optimizer(_params(), name="sgd", lr=0.08)
    ref = build_optimizer(_params(), name="sgd", lr=0.08)
    sched = build_cosine_schedule(ours, total=25, eta_min=0.001)
    ref_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=25, eta_min=0.001)
    for _ in range(25):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-9,
                                                           abs=1e-12)
        ours.step(), ref.step(), sched.step(), ref_sched.step()


def test_warmup_then_cosine() -> None:
    opt = build_optimizer(_params(), name="adamw", lr=1.0)
    sched = build_cosine_schedule(opt, total=10, warmup=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3)
    assert lrs[2] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    with pytest.raises(ConfigError):
        build_cosine_schedule(opt, total=3, warmup=-1)


def test_warmup_longer_than_training_is_shortened() -> None:
    opt = build_optimizer(_params(), name="adamw", lr=1.0)
    build_cosine_schedule(opt, total=1, warmup=1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)  # no warm-up left: full lr at once
