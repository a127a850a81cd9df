"""Token geometry of timm ViTs: prefix tokens and the patch grid, read from the model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from xai_bench.utils.errors import ConfigError


def is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


def token_grid(model: nn.Module) -> tuple[int, int, int]:
    """(num_prefix_tokens, grid_h, grid_w): CLS (+ distillation / register tokens) come first."""
    if not is_vit(model):
        raise ConfigError(f"{type(model).__name__} is not a timm ViT (no patch_embed/blocks).")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = (int(v) for v in model.patch_embed.grid_size)
    return prefix, gh, gw


def tokens_to_grid(tokens: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, N_tokens, ...) with prefix tokens -> (B, gh, gw, ...) patch tokens only."""
    prefix, gh, gw = token_grid(model)
    patches = tokens[:, prefix:]
    if patches.shape[1] != gh * gw:
        raise ValueError(f"expected {gh * gw} patch tokens after {prefix} prefix tokens, "
                         f"got {patches.shape[1]}")
    return patches.reshape(patches.shape[0], gh, gw, *patches.shape[2:])


@contextmanager
def capture_attention(model: nn.Module, retain_grad: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record every block's attention probabilities (B, heads, N, N), in block order.

    timm's fused attention never materialises the matrix, so fusion is switched off for the
    duration (the output is the same up to float rounding) and restored afterwards. With
    `retain_grad`, each recorded tensor keeps its .grad after a backward pass.
    """
    recorded: list[torch.Tensor] = []
    handles, flags = [], []
    for block in model.blocks:
        attn = block.attn
        if not hasattr(attn, "attn_drop"):
            raise ConfigError(f"{type(attn).__name__} has no attn_drop to read the attention from.")
        flags.append((attn, getattr(attn, "fused_attn", False)))
        attn.fused_attn = False

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            probs = inputs[0]
            if retain_grad and probs.requires_grad:
                probs.retain_grad()
            recorded.append(probs)

        handles.append(attn.attn_drop.register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in flags:
            attn.fused_attn = flag


@contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """timm's fused (flash) attention has no double backward: compute attention explicitly
    meanwhile (same output up to float rounding), then restore each module's flag."""
    flags = [(m, m.fused_attn) for m in model.modules() if getattr(m, "fused_attn", False)]
    for m, _ in flags:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.fused_attn = flag
