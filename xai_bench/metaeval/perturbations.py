"""The perturbations of MetaQuantus' tests (Hedström et al., 2023): the model's weights or the
inputs, a little (noise resilience, NR: predictions should mostly survive) or a lot
(adversarial reactivity, AR: predictions should change).

  model test  every parameter multiplied by noise drawn from N(1, std^2) (multiplicative, the
              paper's) or added N(0, std^2) (additive); NR std 0.001, AR std 2.0 by default
  input test  every pixel (in the model's normalised input space) plus U[-a, a] noise;
              NR a = 0.001, AR a = 5.0 by default

Every draw is seeded: a model draw by (seed, draw, test), an image's noise by (seed, image id,
stream) through xai_bench.utils.seeded_noise, so the same image gets the same noise whichever
batch it is in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import image_seed, seeded_uniform

__all__ = ["KINDS", "MODEL_NOISE", "SPACES", "Condition", "conditions", "perturb_images",
           "perturb_model"]

SPACES = ("model", "input")
KINDS = ("nr", "ar")
MODEL_NOISE = ("multiplicative", "additive")
# stream ids keeping the draws of the four tests apart
_STREAMS = {("model", "nr"): 1, ("model", "ar"): 2, ("input", "nr"): 3, ("input", "ar"): 4}


@dataclass(frozen=True)
class Condition:
    """One way of scoring the maps: unperturbed (space "clean"), or draw `draw` of a test."""

    space: str  # clean | model | input
    kind: str = "clean"  # clean | nr | ar
    draw: int = 0
    level: float = 0.0  # the noise's std (model) or half-width (input)

    @property
    def name(self) -> str:
        return "clean" if self.space == "clean" else f"{self.space}_{self.kind}"

    @property
    def stream(self) -> int:
        return _STREAMS.get((self.space, self.kind), 0)


def conditions(draws: int, spaces: tuple[str, ...], model_noise: dict[str, float],
               input_noise: dict[str, float]) -> list[Condition]:
    """The clean condition, then `draws` draws of NR and AR in each space.

    Args:
        draws: K, the perturbation draws per test (>= 1).
        spaces: which tests to run: "model", "input" or both.
        model_noise: {"nr": std, "ar": std} of the weight noise.
        input_noise: {"nr": a, "ar": a}, the half-width of the uniform input noise.

    Returns:
        The conditions in the order they are scored.

    Raises:
        ConfigError: draws < 1, an unknown space, or a noise level that is not > 0.
    """
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"meta.draws must be an integer >= 1; got {draws!r}.")
    if not spaces:
        raise ConfigError(f"meta.spaces needs at least one of {', '.join(SPACES)}.")
    levels = {"model": model_noise, "input": input_noise}
    out = [Condition("clean")]
    for space in spaces:
        if space not in SPACES:
            raise ConfigError(f"meta.spaces must hold {' | '.join(SPACES)}; got {space!r}.")
        for kind in KINDS:
            level = levels[space].get(kind) if levels[space] is not None else None
            if (isinstance(level, bool) or not isinstance(level, int | float)
                    or not float(level) > 0):
                raise ConfigError(f"meta.{space}_noise.{kind} must be a number > 0; "
                                  f"got {level!r}.")
            out += [Condition(space, kind, draw, float(level)) for draw in range(draws)]
    return out


def perturb_model(model: nn.Module, std: float, seed: int, draw: int, stream: int = 0,
                  noise: str = "multiplicative") -> nn.Module:
    """A copy of `model` with noisy parameters (buffers untouched, as quantus' `sample`).

    Args:
        model: The trained model (not modified).
        std: The standard deviation of the noise.
        seed, draw, stream: Key of the draw (the same key gives the same model).
        noise: multiplicative (w * N(1, std^2), the paper's) | additive (w + N(0, std^2)).

    Returns:
        The perturbed copy, in eval mode, on the model's device.
    """
    if noise not in MODEL_NOISE:
        raise ConfigError(f"meta.model_noise_type must be one of {', '.join(MODEL_NOISE)}; "
                          f"got {noise!r}.")
    out = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(image_seed(seed, draw, 1000 + stream))
    mean = 1.0 if noise == "multiplicative" else 0.0
    with torch.no_grad():
        for param in out.parameters():
            if not param.is_floating_point():
                continue
            draws = torch.empty(param.shape, dtype=torch.float32).normal_(mean, std,
                                                                          generator=gen)
            draws = draws.to(param.device, param.dtype)
            if noise == "multiplicative":
                param.mul_(draws)
            else:
                param.add_(draws)
    return out


def perturb_images(images: torch.Tensor, ids: torch.Tensor, half_width: float, seed: int,
                   draw: int, stream: int = 0) -> torch.Tensor:
    """`images` plus U[-a, a] noise per pixel, seeded per image id (MetaQuantus' input test).

    Args:
        images: (B, C, H, W) model inputs (normalised).
        ids: (B,) dataset indices of the images (the noise's key).
        half_width: a.
        seed, draw, stream: Key of the draw.

    Returns:
        The noisy images (same dtype and device).
    """
    noise = seeded_uniform(ids, tuple(images.shape[1:]), seed=seed,
                           stream=int(draw) * 16 + int(stream), low=-half_width,
                           high=half_width, device=images.device)
    return images + noise.to(images.dtype)
