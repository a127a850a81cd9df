"""Occlusion: how much the target logit drops when a window of the image is hidden.

A `window` (all channels) slides over the image with `stride`; every occluded copy (pixels of
the window set to `baseline`, 0 = the dataset mean of normalised images) is scored, and each
pixel gets the mean drop f_t(x) - f_t(x_occluded) over the windows that cover it (captum's
Occlusion definition). Window starts are 0, s, 2s, ... while a start leaves (side - window) /
s steps, plus one: ceil((side - window) / s) + 1 starts per side; the last window is cut at
the border where the stride does not divide (as captum does). The stride must not exceed the
window, so every pixel is covered.

Cost: one clean forward (which also resolves the target) + one forward per window, the
occluded copies of all images processed `batch_size` at a time. The per-pixel mean is a
separable sum: with R (windows x side) the 0/1 cover of each window along a side,
attribution = R_y^T D R_x / (cover count), D the (windows_y x windows_x) drops of an image.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.utils.errors import ConfigError


def _pair(value: int | list[int] | tuple[int, ...], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"occlusion {name} must be a positive int or [height, width]; "
                          f"got {value!r}.")
    return pair  # type: ignore[return-value]


def window_starts(side: int, window: int, stride: int) -> list[int]:
    """Start of every window along one side (captum's positions, the last one cut at the
    border when the stride does not divide side - window)."""
    if window > side:
        raise ConfigError(f"occlusion window {window} is larger than the image side {side}.")
    count = math.ceil((side - window) / stride) + 1
    return [k * stride for k in range(count)]


def cover(starts: list[int], window: int, side: int, device: torch.device,
          dtype: torch.dtype) -> torch.Tensor:
    """(len(starts), side) 0/1: which positions each window covers."""
    pos = torch.arange(side, device=device)
    lo = torch.tensor(starts, device=device)[:, None]
    return ((pos >= lo) & (pos < lo + window)).to(dtype)


@register_method("occlusion")
class Occlusion(ExplainMethod):
    """Occlusion (Zeiler & Fergus 2014): mean drop of the target logit over the windows that
    hide a pixel; captum's Occlusion with a (channels, window) sliding window.

    Settings: window (pixels, int or [h, w]), stride (int or [h, w], <= window), baseline
    (the value occluded pixels take), batch_size (occluded copies per forward).
    """

    family: ClassVar[str] = "perturbation"
    needs_grad: ClassVar[bool] = False
    target_in_forward: ClassVar[bool] = True  # the clean forward comes first

    def __init__(self, *args: Any, window: int | list[int] = 32, stride: int | list[int] = 16,
                 baseline: float = 0.0, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.window, self.stride = _pair(window, "window"), _pair(stride, "stride")
        if any(s > w for s, w in zip(self.stride, self.window, strict=True)):
            raise ConfigError(f"occlusion stride {list(self.stride)} must not exceed the window "
                              f"{list(self.window)} (pixels between windows would get no "
                              "attribution).")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1 (occluded images per forward); "
                              f"got {batch_size}.")
        self.baseline, self.batch_size = float(baseline), int(batch_size)

    def grid(self, height: int, width: int) -> tuple[list[int], list[int]]:
        """Window starts along the height and the width."""
        return (window_starts(height, self.window[0], self.stride[0]),
                window_starts(width, self.window[1], self.stride[1]))

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        ys, xs = self.grid(height, width)
        return Passes(forwards=1 + len(ys) * len(xs), backwards=0)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        ys, xs = self.grid(height, width)
        # the clean forward: the base class's hook resolves `target` from it, in place
        clean = model(images)
        target = target.to(clean.device)
        score = clean.gather(1, target.view(-1, 1)).squeeze(1)
        dtype = score.dtype
        rows = cover(ys, self.window[0], height, images.device, images.dtype)  # (ny, H)
        cols = cover(xs, self.window[1], width, images.device, images.dtype)  # (nx, W)
        n_win = len(ys) * len(xs)
        drops = torch.empty(batch, n_win, dtype=dtype, device=images.device)
        total = batch * n_win
        for start in range(0, total, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, total), device=images.device)
            img, win = idx // n_win, idx % n_win
            hidden = rows[win // len(xs)][:, :, None] * cols[win % len(xs)][:, None, :]
            occluded = torch.where(hidden[:, None].bool(),
                                   torch.full_like(images[:1], self.baseline), images[img])
            out = model(occluded).gather(1, target[img].view(-1, 1)).squeeze(1)
            drops[img, win] = score[img] - out
        drops = drops.view(batch, len(ys), len(xs)).to(images.dtype)
        summed = torch.einsum("yh,byx,xw->bhw", rows, drops, cols)
        count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        return summed / count
