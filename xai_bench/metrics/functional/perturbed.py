"""The model's outputs on many perturbed copies of a batch, in forwards of `batch_size`: the one
loop behind region perturbation, deletion / insertion, the correlation-type faithfulness metrics
and the faithfulness curves, so that they all cut and score their forwards alike.

A metric describes its perturbed images as steps: step s holds images 0..sizes[s]-1 of the batch
(all B, unless the images run different numbers of steps: then the caller sorts them by it, so
that those still perturbed at step s are a prefix), built on demand by build(s, lo, hi). The
sum(sizes) images are flattened step-major and cut into forwards of `batch_size`, so one forward
may span several steps: every forward but the last is full whatever the number of steps, and
only the images of one forward exist at a time. Everything stays on the model's device (no host
sync per forward), so the CPU can prepare the next forward while the accelerator runs this one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Builder", "Score", "step_scores", "target_logit", "target_prob"]

# build(step, lo, hi) -> the perturbed images lo:hi of that step
Builder = Callable[[int, int, int], Tensor]
# score(logits (N, K), target (N,)) -> (N,) float32
Score = Callable[[Tensor, Tensor], Tensor]
# (step, lo, hi): images lo:hi of one step
_Part = tuple[int, int, int]


def target_prob(logits: Tensor, target: Tensor) -> Tensor:
    """softmax(logits)[target] per row, in float32 whatever the model's dtype."""
    return torch.softmax(logits.float(), dim=-1).gather(1, target.view(-1, 1)).squeeze(1)


def target_logit(logits: Tensor, target: Tensor) -> Tensor:
    """logits[target] per row, in float32."""
    return logits.float().gather(1, target.view(-1, 1)).squeeze(1)


def _forwards(sizes: Sequence[int], per: int) -> Iterator[list[_Part]]:
    """The parts of each forward of `per` images over the steps' images, step-major."""
    parts: list[_Part] = []
    filled = 0
    for step, size in enumerate(sizes):
        lo = 0
        while lo < size:
            hi = min(int(size), lo + per - filled)
            parts.append((step, lo, hi))
            filled, lo = filled + hi - lo, hi
            if filled == per:
                yield parts
                parts, filled = [], 0
    if parts:
        yield parts


def step_scores(model: nn.Module, sizes: Sequence[int], build: Builder, target: Tensor,
                batch_size: int | None, score: Score = target_prob,
                clean: Tensor | None = None) -> Tensor:
    """(B, S) score(model(x), y) of image b at step s, for b < sizes[s]; NaN beyond (above).

    Args:
        model: The classifier, run under no_grad in its current mode.
        sizes: S entries: how many images (a prefix of the batch) step s holds.
        build: The perturbed images of a step (above); not called for step 0 with `clean`.
        target: (B,) y on the model's device.
        batch_size: Images per forward (None: B).
        score: What of the logits is kept (`target_prob`, `target_logit`, ...).
        clean: (B, C, H, W) images that step 0 holds unperturbed, or None.
    """
    batch = target.shape[0]
    per = int(batch_size) if batch_size is not None else max(batch, 1)
    total = sum(int(n) for n in sizes)
    flat = torch.empty(total, dtype=torch.float32, device=target.device)

    def images(step: int, lo: int, hi: int) -> Tensor:
        return clean[lo:hi] if clean is not None and step == 0 else build(step, lo, hi)

    start = 0
    with torch.no_grad():
        for parts in _forwards(sizes, per):
            if len(parts) == 1:  # no copy for a forward inside one step
                step, lo, hi = parts[0]
                x, tgt = images(step, lo, hi), target[lo:hi]
            else:
                x = torch.cat([images(*p) for p in parts])
                tgt = torch.cat([target[lo:hi] for _, lo, hi in parts])
            flat[start:start + tgt.shape[0]] = score(model(x), tgt)
            start += tgt.shape[0]
    if all(int(n) == batch for n in sizes):
        return flat.view(len(sizes), batch).T.contiguous()
    where = torch.cat([step * batch + torch.arange(int(n)) for step, n in enumerate(sizes)])
    out = torch.full((len(sizes) * batch,), math.nan, device=target.device)
    out.index_copy_(0, where.to(target.device), flat)
    return out.view(len(sizes), batch).T.contiguous()
