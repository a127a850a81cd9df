"""Attention-based explanations of timm ViTs (docs/methods.md).

- `attention`: the study's map, one block's CLS row to the patch tokens (class-agnostic).
- `rollout`: Abnar & Zuidema attention rollout, rows of (A + I) normalised, multiplied from a
  start layer.
- `chefer_generic`: Chefer et al. ICCV 2021 "generic attention explainability"
  (R = I; R += mean_heads(relu(grad_A * A)) @ R; no normalisation).

The attention probabilities are read with `capture_attention` (fused attention is switched off
for the call and restored), token geometry comes from `token_grid`: never a hard-coded CLS
count or grid size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.explain.vit_geometry import capture_attention, token_grid
from xai_bench.utils.errors import ConfigError

HEAD_REDUCTIONS = ("mean", "max", "min")


def reduce_heads(attn: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N); the study averaged the heads."""
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    if how == "min":
        return attn.amin(dim=1)
    raise ConfigError(f"head_reduction must be one of {HEAD_REDUCTIONS}; got {how!r}.")


def check_cls_model(model: nn.Module) -> tuple[int, int, int]:
    """Token geometry, refusing models whose row 0 is not a CLS token (the maps read the
    CLS row)."""
    prefix, gh, gw = token_grid(model)
    if getattr(model, "cls_token", None) is None or prefix < 1:
        raise ConfigError(
            f"{type(model).__name__} has no CLS token: the attention maps read the CLS row "
            "(build the ViT with class_token=True)."
        )
    return prefix, gh, gw


def resolve_layer(index: int, depth: int, setting: str) -> int:
    """A block index (negative counts from the end) -> 0..depth-1, or a clear error."""
    if not -depth <= index < depth:
        raise ConfigError(f"{setting}={index} is out of range for a ViT with {depth} blocks.")
    return index % depth


def cls_row_to_grid(matrix: torch.Tensor, prefix: int, gh: int, gw: int) -> torch.Tensor:
    """(B, N, N) token matrix -> (B, gh, gw): row 0 (CLS) restricted to the patch columns."""
    return matrix[:, 0, prefix:].reshape(matrix.shape[0], gh, gw)


def rollout_matrix(attentions: list[torch.Tensor], head_reduction: str = "mean",
                   start_layer: int = 0, residual: bool = True,
                   discard_ratio: float = 0.0) -> torch.Tensor:
    """Full rolled-out matrix R = A_L ... A_start (B, N, N) from per-block (B, heads, N, N) probs.

    Each A_b is the head-reduced attention, optionally with the lowest `discard_ratio` of every
    row zeroed (column 0, the CLS token, is always kept), plus I when `residual` (the skip
    connection), then rows normalised to sum to 1.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1); got {discard_ratio}.")
    start = resolve_layer(start_layer, len(attentions), "start_layer")
    first = attentions[0]
    n = first.shape[-1]
    eye = torch.eye(n, dtype=first.dtype, device=first.device)
    rolled = eye.expand(first.shape[0], n, n).clone()
    for attn in attentions[start:]:
        a = reduce_heads(attn, head_reduction)
        k = int(discard_ratio * n)
        if k > 0:
            ranking = a.clone()
            ranking[..., 0] = float("inf")  # never drop the CLS column
            drop = ranking.topk(k, dim=-1, largest=False).indices
            a = a.scatter(-1, drop, 0.0)
        if residual:
            a = a + eye
        a = a / a.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)
        rolled = a @ rolled
    return rolled


def generic_relevance(attentions: list[torch.Tensor], grads: list[torch.Tensor],
                      start_layer: int = 0) -> torch.Tensor:
    """Chefer ICCV 2021: R = I; per block R = R + mean_heads(relu(grad_A * A)) @ R. (B, N, N)."""
    start = resolve_layer(start_layer, len(attentions), "start_layer")
    first = attentions[0]
    n = first.shape[-1]
    rel = torch.eye(n, dtype=first.dtype, device=first.device).expand(first.shape[0], n, n).clone()
    for attn, grad in list(zip(attentions, grads, strict=True))[start:]:
        a_bar = (grad * attn).clamp(min=0).mean(dim=1)
        rel = rel + a_bar @ rel
    return rel


@register_method("attention")
class AttentionMap(ExplainMethod):
    """The study's attention map: block `layer`'s CLS row to the patches, heads reduced.

    Class-agnostic (the target is ignored); nearest upsampling makes each token a pixel block,
    as in the study.
    """

    family = "attention"
    models = ("vit",)
    default_upsample = "nearest"
    needs_grad = False

    def __init__(self, layer: int = -1, head_reduction: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if head_reduction not in HEAD_REDUCTIONS:
            raise ConfigError(f"head_reduction must be one of {HEAD_REDUCTIONS}; "
                              f"got {head_reduction!r}.")
        self.layer, self.head_reduction = layer, head_reduction

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        prefix, gh, gw = check_cls_model(model)
        layer = resolve_layer(self.layer, len(model.blocks), "layer")
        with torch.no_grad(), capture_attention(model) as attns:
            model(images)
        return cls_row_to_grid(reduce_heads(attns[layer], self.head_reduction), prefix, gh, gw)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward, which also resolves the target (the map is class-agnostic)."""
        return Passes(forwards=1)


@register_method("rollout")
class AttentionRollout(ExplainMethod):
    """Abnar & Zuidema attention rollout: CLS row of prod_b rownorm(A_b + I), b >= start_layer."""

    family = "attention"
    models = ("vit",)
    default_upsample = "bilinear"
    needs_grad = False

    def __init__(self, head_reduction: str = "mean", start_layer: int = 0, residual: bool = True,
                 discard_ratio: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if head_reduction not in HEAD_REDUCTIONS:
            raise ConfigError(f"head_reduction must be one of {HEAD_REDUCTIONS}; "
                              f"got {head_reduction!r}.")
        if not 0.0 <= discard_ratio < 1.0:
            raise ConfigError(f"discard_ratio must be in [0, 1); got {discard_ratio}.")
        self.head_reduction, self.start_layer = head_reduction, start_layer
        self.residual, self.discard_ratio = residual, discard_ratio

    def rollout(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The full rolled-out (B, N, N) matrix (exposed for tests and analyses)."""
        with torch.no_grad(), capture_attention(model) as attns:
            model(images)
        return rollout_matrix(attns, self.head_reduction, self.start_layer, self.residual,
                              self.discard_ratio)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        prefix, gh, gw = check_cls_model(model)
        return cls_row_to_grid(self.rollout(model, images), prefix, gh, gw)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward, which also resolves the target (the map is class-agnostic)."""
        return Passes(forwards=1)


def attention_and_grads(model: nn.Module, images: torch.Tensor,
                        target: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each block's attention probs and d(target logit)/d(probs), batched, in one forward/backward.

    Summing the target logits over the batch gives per-image gradients (images are independent
    in an eval-mode ViT). `autograd.grad` leaves the parameters' .grad untouched; the input is
    made to require grad so this works with frozen parameters too.
    """
    with torch.enable_grad(), capture_attention(model) as attns:
        logits = model(images.detach().requires_grad_(True))
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        grads = torch.autograd.grad(score, attns, allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for a, g in zip(attns, grads, strict=True)]
    return [a.detach() for a in attns], [g.detach() for g in grads]


@register_method("chefer_generic")
class CheferGeneric(ExplainMethod):
    """Chefer et al. ICCV 2021 generic attention explainability (self-attention encoder rule).

    `remove_identity` subtracts I from R before reading the map; note that the CLS row's patch
    columns of I are zero, so it only matters for analyses of the full matrix.
    """

    target_in_forward = True
    family = "attention"
    models = ("vit",)
    default_upsample = "bilinear"
    needs_grad = True

    def __init__(self, start_layer: int = 0, remove_identity: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_layer, self.remove_identity = start_layer, remove_identity

    def relevance(self, model: nn.Module, images: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """The full (B, N, N) relevance matrix R."""
        attns, grads = attention_and_grads(model, images, target)
        rel = generic_relevance(attns, grads, self.start_layer)
        if self.remove_identity:
            rel = rel - torch.eye(rel.shape[-1], dtype=rel.dtype, device=rel.device)
        return rel

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        prefix, gh, gw = check_cls_model(model)
        resolve_layer(self.start_layer, len(model.blocks), "start_layer")
        return cls_row_to_grid(self.relevance(model, images, target), prefix, gh, gw)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward (it resolves the target too) and one backward to the attention maps."""
        return Passes(forwards=1, backwards=1)
