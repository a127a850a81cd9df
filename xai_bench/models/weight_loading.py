"""Loading a state dict into a model: strict about the backbone, the classifier head fresh.

A file that silently fails to fill half the model would make a whole grid of experiments
meaningless, so missing, unexpected or misshapen keys are errors that name the first offenders.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from xai_bench.models.weight_files import strip_wrapper_prefixes, under_prefix
from xai_bench.utils.errors import XaiBenchError

__all__ = [
    "HARMLESS_EXTRA_PREFIXES",
    "TOLERATED_MISSING_SUFFIXES",
    "classifier_prefixes",
    "first_keys",
    "load_weights_into",
    "rename_prefixes",
    "resample_pos_embed",
]

log = logging.getLogger(__name__)

# Keys a file may carry that the classifier never uses (MAE pre-training decoder and mask token).
HARMLESS_EXTRA_PREFIXES = ("decoder", "mask_token")
# Buffers older files lack and that never change a forward pass.
TOLERATED_MISSING_SUFFIXES = ("num_batches_tracked",)


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Qualified module name(s) of the model's classifier, whose weights are always fresh."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module):
        return []
    return [name for name, module in model.named_modules() if module is head and name]


def rename_prefixes(
    state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Apply init.key_map: each key starting with an old prefix gets the new one (first match)."""
    if not key_map:
        return dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in key_map.items():
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        if new_key in out:
            raise XaiBenchError(
                f"init.key_map {dict(key_map)} maps two keys of the file onto {new_key}; "
                "the file already has that key, so the rename is wrong for this file."
            )
        out[new_key] = value
    return out


def resample_pos_embed(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Interpolate a ViT file's pos_embed to the model's patch grid (another img_size or patch)."""
    pos = state_dict.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is None or not isinstance(target, torch.Tensor) or pos.shape == target.shape:
        return
    from timm.layers import resample_abs_pos_embed

    # timm ViTs without embed_class keep the prefix tokens out of pos_embed.
    prefix = (
        0
        if getattr(model, "no_embed_class", False)
        else int(getattr(model, "num_prefix_tokens", 1))
    )
    old_tokens = pos.shape[1] - prefix
    side = int(round(old_tokens**0.5))
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if (
        pos.ndim != 3
        or side * side != old_tokens
        or grid is None
        or pos.shape[-1] != target.shape[-1]
    ):
        return  # reported as a shape mismatch by the caller
    state_dict["pos_embed"] = resample_abs_pos_embed(
        pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix
    )
    log.info("resampled pos_embed from a %dx%d to a %dx%d patch grid", side, side, *grid)


def first_keys(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)  # model / file order: the first offenders are the informative ones
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    key_map: Mapping[str, str] | None = None,
    source: str = "the weights file",
    fresh_prefixes: Iterable[str] = (),
) -> list[str]:
    """Load a backbone state dict strictly; the classifier head stays fresh.

    `fresh_prefixes` are modules added on top of the architecture (SE/CBAM blocks): they may be
    absent from the file as a whole, and then keep their random init. Returns the model keys
    left at their initial values.
    """
    head = classifier_prefixes(model)
    sd = strip_wrapper_prefixes(state_dict, ignore=head)
    sd = rename_prefixes(sd, key_map or {})
    sd = {k: v for k, v in sd.items() if not under_prefix(k, head)}
    resample_pos_embed(model, sd)

    own = model.state_dict()
    arch = getattr(model, "xai_arch", None) or type(model).__name__
    fresh = tuple(fresh_prefixes)
    fresh_in_file = [k for k in sd if under_prefix(k, fresh)]
    missing = [
        k
        for k in own
        if k not in sd
        and not under_prefix(k, head)
        and not k.endswith(TOLERATED_MISSING_SUFFIXES)
        and not (not fresh_in_file and under_prefix(k, fresh))
    ]
    unexpected = [k for k in sd if k not in own and not k.startswith(HARMLESS_EXTRA_PREFIXES)]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} model parameter(s) missing from the file: {first_keys(missing)}"
            )
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected key(s) in the file: {first_keys(unexpected)}"
            )
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {first_keys(mismatched, 4)}")
        raise XaiBenchError(
            f"{source} does not match the architecture {arch}: " + "; ".join(problems) + ". "
            "Check model.arch (and its timm kwargs) against the file, "
            "and init.key_map for renamed keys."
        )
    sd = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(sd, strict=False)
    left = [k for k in own if k not in sd]
    if fresh and not fresh_in_file:
        log.warning(
            "%s has no attention-block weights: the SE/CBAM blocks start from random init", source
        )
    log.info(
        "loaded %d tensors from %s; %d left at init (head%s)",
        len(sd),
        source,
        len(left),
        " and attention blocks" if fresh and not fresh_in_file else "",
    )
    return left
