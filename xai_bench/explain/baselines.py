"""Trivial maps that every table reports beside the methods.

On the study's own masks a random map already scores IoU 0.43 / 0.59 on cp_child / kvasir, and
a constant map wins the pointing game on every non-empty mask under the tie rule: a method's
score means little until it is seen next to these. None of them looks at the model's gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_uniform


class BaselineMap(ExplainMethod):
    """What the trivial maps share: no gradients, any model, and one forward per image (the
    evaluation reads the target and the logits from it; the map itself needs no model)."""

    family = "baseline"
    needs_grad = False

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=1)


@register_method("random")
class RandomMap(BaselineMap):
    """Uniform random (B, H, W) map. With image ids (as the evaluation passes them) each
    image's map is a function of (seed, id) alone, whatever the batch or rank; without, each
    call draws the same maps for the same seed and batch shape."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = int(seed)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        if self.current_ids is not None:
            return seeded_uniform(self.current_ids, (height, width), seed=self.seed,
                                  device=images.device)
        gen = torch.Generator().manual_seed(self.seed)  # CPU generator: same maps on every device
        return torch.rand((batch, height, width), generator=gen).to(images.device)


@register_method("centre")
class CentrePrior(BaselineMap):
    """A centred Gaussian exp(-(dy^2 + dx^2) / (2 sigma^2)), peak 1, with dy, dx each pixel
    centre's offset from the image centre as a fraction of the height / width: sigma = `sigma` x
    the side, isotropic on square images (the study's 224 x 224). The photographer's bias
    (lesions are usually framed in the middle) with no model at all."""

    def __init__(self, *args: Any, sigma: float = 0.25, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not float(sigma) > 0:
            raise ConfigError(
                f"centre prior sigma must be > 0 (a fraction of the image side); got {sigma}.")
        self.sigma = float(sigma)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2], images.shape[-1]
        ys = (torch.arange(height, device=images.device, dtype=torch.float32)
              + 0.5 - height / 2) / height
        xs = (torch.arange(width, device=images.device, dtype=torch.float32)
              + 0.5 - width / 2) / width
        gauss = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * self.sigma**2))
        return gauss.expand(images.shape[0], height, width).clone()


@register_method("uniform")
class UniformMap(BaselineMap):
    """A constant map: every pixel is a maximum, so it shows how lenient the pointing game's
    tie rule is, and its IoU at q% equals the mask's area (the box covers the image)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("normalize", "none")  # min-max of a constant is all zeros: keep ones
        super().__init__(*args, **kwargs)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], images.shape[-2], images.shape[-1],
                          device=images.device)
