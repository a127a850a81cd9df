"""The shared loop over perturbed images (`functional.perturbed.step_scores`): how it cuts the
forwards, what it returns where a step holds fewer images, and its clean step 0."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from xai_bench.metrics.functional.perturbed import step_scores, target_logit, target_prob


class Logits(nn.Module):
    """logits[n, k] = the mean of image n's channel k: exact per image, whatever the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return x.mean(dim=(2, 3))


def _images(batch: int = 5) -> torch.Tensor:
    return torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def _build(images: torch.Tensor, calls: list[tuple[int, int, int]] | None = None
           ) -> Callable[[int, int, int], torch.Tensor]:
    def build(step: int, lo: int, hi: int) -> torch.Tensor:
        if calls is not None:
            calls.append((step, lo, hi))
        return images[lo:hi] * (step + 2)

    return build


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3, 7, 100])
def test_forwards_are_full_across_steps_and_values_do_not_depend_on_them(
        batch_size: int | None) -> None:
    images, target = _images(), torch.tensor([0, 1, 2, 0, 1])
    model = Logits()
    out = step_scores(model, [5] * 4, _build(images), target, batch_size, score=target_logit)
    per = 5 if batch_size is None else batch_size
    assert model.batches == [per] * (20 // per) + ([20 % per] if 20 % per else [])
    expected = torch.stack([target_logit(images.mean(dim=(2, 3)) * (s + 2), target)
                            for s in range(4)], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_ragged_steps_hold_a_prefix_and_nan_beyond() -> None:
    images, target = _images(), torch.tensor([0, 1, 2, 0, 1])
    calls: list[tuple[int, int, int]] = []
    out = step_scores(Logits(), [5, 3, 1], _build(images, calls), target, 2)
    assert all(hi <= [5, 3, 1][step] for step, _, hi in calls)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert torch.isnan(out[3:, 1]).all() and torch.isnan(out[1:, 2]).all()
    assert not torch.isnan(out[:, 0]).any() and not torch.isnan(out[:3, 1]).any()
    torch.testing.assert_close(out[0, 2], target_prob(images[:1].mean(dim=(2, 3)) * 4,
                                                      target[:1])[0])


def test_clean_step_zero_is_not_built() -> None:
    images, target = _images(), torch.tensor([0, 1, 2, 0, 1])
    calls: list[tuple[int, int, int]] = []
    out = step_scores(Logits(), [5, 5], _build(images, calls), target, 3, clean=images)
    assert {step for step, _, _ in calls} == {1}
    torch.testing.assert_close(out[:, 0], target_prob(images.mean(dim=(2, 3)), target))


def test_scores_are_float32_of_the_target() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]], dtype=torch.float64)
    target = torch.tensor([2, 2])
    assert target_logit(logits, target).tolist() == pytest.approx([3.0, math.log(2.0)])
    assert target_prob(logits, target).dtype == torch.float32
    assert target_prob(logits, target)[1].item() == pytest.approx(0.5)
