"""Noise that depends on (seed, image id, stream) only, never on batch, rank or order.

Metrics that perturb inputs (AOPC's noise fill, Max-Sensitivity's draws) and the random-map
baseline must give every image the same noise whichever batch or DDP rank it lands on,
otherwise a 2-process evaluation would not reproduce a 1-process one. Each image gets its own
CPU generator seeded from a hash of its coordinates; CPU draws make the values identical on
every device, and one generator call per image is far cheaper than hashing every element.
"""

from __future__ import annotations

import torch

__all__ = ["image_seed", "seeded_normal", "seeded_permutation", "seeded_uniform"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def image_seed(seed: int, image_id: int, stream: int = 0) -> int:
    """A well-mixed 63-bit generator seed for one (seed, image id, stream) triple."""
    return _splitmix64(_splitmix64(_splitmix64(int(seed)) ^ int(image_id)) ^ int(stream)) >> 1


def _per_image(ids: torch.Tensor, shape: tuple[int, ...], seed: int, stream: int,
               device: torch.device | str | None, fill: str, *args: float) -> torch.Tensor:
    device = torch.device(device) if device is not None else ids.device
    out = torch.empty((int(ids.numel()), *shape), dtype=torch.float32)
    gen = torch.Generator()
    for row, image_id in enumerate(ids.view(-1).tolist()):
        gen.manual_seed(image_seed(seed, image_id, stream))
        getattr(out[row], fill)(*args, generator=gen)
    if device.type == "cuda":
        out = out.pin_memory().to(device, non_blocking=True)
    return out.to(device)


def seeded_uniform(
    ids: torch.Tensor,
    shape: tuple[int, ...],
    seed: int = 0,
    stream: int = 0,
    low: float = 0.0,
    high: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, *shape) float32 noise, uniform in [low, high), a pure function of each image's id.

    `stream` separates independent draws for the same image (a perturbation step, a sample
    number).
    """
    return _per_image(ids, shape, seed, stream, device, "uniform_", low, high)


def seeded_normal(
    ids: torch.Tensor,
    shape: tuple[int, ...],
    seed: int = 0,
    stream: int = 0,
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, *shape) float32 Gaussian noise N(mean, std^2), a pure function of each image's id."""
    return _per_image(ids, shape, seed, stream, device, "normal_", mean, std)


def seeded_permutation(
    ids: torch.Tensor,
    n: int,
    seed: int = 0,
    stream: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, n) int64: a random permutation of 0..n-1 per image, a pure function of its id (the
    first k of it: k distinct indices drawn without replacement)."""
    device = torch.device(device) if device is not None else ids.device
    out = torch.empty((int(ids.numel()), int(n)), dtype=torch.int64)
    gen = torch.Generator()
    for row, image_id in enumerate(ids.view(-1).tolist()):
        gen.manual_seed(image_seed(seed, image_id, stream))
        out[row] = torch.randperm(int(n), generator=gen)
    return out.to(device)
