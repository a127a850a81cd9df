"""Model parameter randomisation test (Adebayo et al. 2018): a map that survives randomising
the weights it explains does not explain the model.

Layers are randomised top-down (head first), cumulatively ("cascading") or one at a time
("independent"), each step seeded by (seed, step), so every rank and every batch sees the same
randomised models. A layer is re-initialised like quantus' MPRT does it: `reset_parameters()`
of every module in it; parameters no module resets (class token, position embedding, layer
scales) are drawn from N(0, 0.02^2), timm's initialisation for them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import image_seed

__all__ = [
    "Layer",
    "average_ranks",
    "randomisation_layers",
    "randomise_layer",
    "randomised_models",
    "spearman",
    "ssim",
]

Layer = tuple[str, list[nn.Module], list[nn.Parameter]]  # name, modules, parameters of the step
GRANULARITIES = ("blocks", "modules")
ORDERS = ("cascading", "independent")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomisation_layers(model: nn.Module, granularity: str = "blocks") -> list[Layer]:
    """The randomisation steps, top-down (output side first).

    blocks: the model's top-level parts, with sequences (ViT `blocks`, VGG `features`,
    ResNet stages) opened one level, e.g. head, norm, blocks.3 ... blocks.0, patch_embed; the
    root's own parameters (class token, position embedding) go with the bottom step.
    modules: every module that owns parameters, like quantus (many small steps).

    Args:
        model: The trained model (not modified).
        granularity: "blocks" or "modules", as above.

    Returns:
        The steps, output side first: (name, modules to reset, parameters to redraw).

    Raises:
        ConfigError: An unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise ConfigError(f"randomisation granularity must be one of {GRANULARITIES}; "
                          f"got {granularity!r}.")
    layers: list[Layer] = []
    if granularity == "modules":
        for name, module in model.named_modules():
            own = list(module.parameters(recurse=False))
            if own:
                layers.append((name or "root", [module], own))
        return layers[::-1]
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 1:
            for sub_name, sub in child.named_children():
                if _has_params(sub):
                    layers.append((f"{name}.{sub_name}", [sub], list(sub.parameters())))
        else:
            layers.append((name, [child], list(child.parameters())))
    root_params = list(model.parameters(recurse=False))
    if root_params:
        if layers:
            bottom_name, bottom_modules, bottom_params = layers[0]
            layers[0] = (f"{bottom_name}+embed", bottom_modules, bottom_params + root_params)
        else:
            layers.append(("root", [model], root_params))
    return layers[::-1]


@torch.no_grad()
def randomise_layer(layer: Layer, seed: int) -> None:
    """Re-initialise one step's modules and parameters in place, reproducibly.

    Args:
        layer: One step of `randomisation_layers`.
        seed: Seeds `reset_parameters()` and the N(0, 0.02^2) draws of the other parameters.
    """
    _, modules, params = layer
    mine = {id(p) for p in params}
    reset: set[int] = set()
    devices = [p.device for p in params if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=devices[:1]):
        torch.manual_seed(seed)
        for top in modules:
            for module in top.modules():
                own = [id(p) for p in module.parameters(recurse=False)]
                # only modules whose parameters are all this step's: the root step of
                # granularity=modules holds the class token and position embedding, not the
                # whole model below it
                if (own and set(own) <= mine
                        and callable(getattr(module, "reset_parameters", None))):
                    module.reset_parameters()
                    reset.update(own)
        gen = torch.Generator().manual_seed(seed)
        for param in params:
            if id(param) not in reset:
                param.copy_(torch.randn(param.shape, generator=gen).mul_(0.02).to(param))


def randomised_models(
    model: nn.Module, granularity: str = "blocks", order: str = "cascading", seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield (layer name, randomised copy) per step; the caller's model is never touched.

    Args:
        model: The trained model (deep-copied, never modified).
        granularity: "blocks" or "modules" (`randomisation_layers`).
        order: "cascading" (each step adds a layer) or "independent" (one layer at a time).
        seed: Step k is seeded by (seed, k), the same on every rank and batch.

    Yields:
        (name of the step's layer, the randomised model).

    Raises:
        ConfigError: An unknown order or granularity.
    """
    if order not in ORDERS:
        raise ConfigError(f"randomisation order must be one of {ORDERS}; got {order!r}.")
    work = copy.deepcopy(model)
    layers = randomisation_layers(work, granularity)
    for step in range(len(layers)):
        if order == "independent" and step > 0:
            work = copy.deepcopy(model)
            layers = randomisation_layers(work, granularity)
        randomise_layer(layers[step], image_seed(seed, step, stream=7))
        yield layers[step][0], work


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks (0-based) of (B, N) values, tied values sharing their mean rank.

    Args:
        values: (B, N) values, ranked per row.

    Returns:
        (B, N) float64 ranks (scipy's rankdata "average" minus 1).
    """
    batch, n = values.shape
    sorted_vals, order = values.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = (new_group.long().cumsum(dim=1) - 1
             + torch.arange(batch, device=values.device).unsqueeze(1) * n)
    positions = torch.arange(n, device=values.device, dtype=torch.float64).expand(batch, n)
    sums = torch.zeros(batch * n, dtype=torch.float64, device=values.device).scatter_add_(
        0, group.flatten(), positions.flatten()
    )
    counts = torch.zeros(batch * n, dtype=torch.float64, device=values.device).scatter_add_(
        0, group.flatten(), torch.ones_like(positions).flatten()
    )
    ranks_sorted = (sums / counts.clamp(min=1))[group]
    return torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per map pair ((B, H, W) each) -> (B,).

    Undefined when a map is constant; for the randomisation test a map that collapsed to a
    constant has lost all of the original's ordering, so one constant map scores 0 and two
    constant maps 1 (nothing changed). NaN maps stay NaN.

    Args:
        a: (B, H, W) maps, e.g. of the trained model.
        b: (B, H, W) maps to compare, e.g. of the randomised model.

    Returns:
        (B,) float32 correlations in [-1, 1].
    """
    ra, rb = average_ranks(a.flatten(1).double()), average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    norm_a, norm_b = ra.norm(dim=1), rb.norm(dim=1)
    rho = (ra * rb).sum(dim=1) / (norm_a * norm_b)
    flat_a, flat_b = norm_a == 0, norm_b == 0
    rho = torch.where(flat_a ^ flat_b, torch.zeros_like(rho), rho)
    rho = torch.where(flat_a & flat_b, torch.ones_like(rho), rho)
    nan = torch.isnan(a.flatten(1)).any(dim=1) | torch.isnan(b.flatten(1)).any(dim=1)
    return rho.masked_fill(nan, float("nan")).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per map pair ((B, H, W) in [0, 1]) -> (B,), Gaussian window 11, sigma 1.5.

    Args:
        a: (B, H, W) maps in [0, 1].
        b: (B, H, W) maps in [0, 1].

    Returns:
        (B,) SSIM (torchmetrics, data range 1).
    """
    out = structural_similarity_index_measure(
        a.unsqueeze(1).float(), b.unsqueeze(1).float(), data_range=1.0, reduction="none"
    )
    return out.view(-1)
