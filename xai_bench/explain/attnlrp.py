"""AttnLRP and CP-LRP for timm ViTs, as one forward and one modified backward.

Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", and the conservative propagation (CP-LRP) of Ali et al., ICML 2022, "XAI for
Transformers: Better Explanations through Conservative Propagation". The rules (see
explain/lrp_rules.py for how each becomes a backward):

  Linear layers (qkv, proj, fc1, fc2, head; the patch embedding for level=pixels)
                    epsilon rule, `epsilon` (0 = LRP-0, the plain gradient, as lxt does)
  LayerNorm         identity rule on the normalisation: the std is a constant
  GELU              identity rule
  softmax           AttnLRP: its linearisation (Prop. 3.1; the log-sum-exp term is a bias that
                    absorbs relevance) = the plain gradient.  CP-LRP: not traversed
  q @ k^T, A @ v    AttnLRP: uniform rule, half the relevance to each operand: q and k get 1/4
                    of the gradient, v 1/2 (folded into the qkv projection's backward).
                    CP-LRP: A constant (q, k computed without gradient), v gets all of it
  residual adds, attention scale, LayerScale, mean pooling
                    linear: the plain gradient (z-proportional split)

Cost: fc1's epsilon rule rides in the GELU's identity ratio (one elementwise pass over the MLP's
widest tensor instead of several), and CP-LRP computes its constant probabilities explicitly,
so its attention backward is one matmul (A^T g) instead of the fused kernel's full backward.

The relevance starts as the target logit (gradient 1 at it, lxt's convention), so a feature
that raises the logit is positive whatever the logit's sign. The map is the relevance summed
over channels either at the patch embedding's output (level=tokens: one value per patch, the
relevance the position embeddings and prefix tokens take is left out) or at the pixels
(level=pixels: through the patch embedding's convolution, a map at input resolution).
Checked against lxt 2.1 on a torchvision ViT carrying the same weights (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, LayerScale, Mlp, PatchDropout
from timm.layers.activations import GELU, GELUTanh, QuickGELU
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.vision_transformer import Block
from torch import nn

from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.explain.lrp_rules import (
    activation_identity,
    conv_epsilon,
    epsilon_linear,
    linear_epsilon,
    norm_identity,
    patched_forwards,
)
from xai_bench.explain.vit_geometry import is_vit, token_grid
from xai_bench.utils.errors import ConfigError

LEVELS = ("tokens", "pixels")
ACTIVATIONS = (nn.GELU, GELU, GELUTanh, QuickGELU)  # f(x) / x -> 1/2 at 0 for each
# modules the rules leave to the plain gradient: linear (or identity) in eval mode
PASSIVE = (nn.Dropout, nn.Identity, LayerScale, DropPath, PatchDropout)
POOLS = ("token", "avg")


def check_supported(model: nn.Module, method: str) -> None:
    """Refuse a CNN, other block / attention / MLP types and attention pooling (modules without
    a rule inside the blocks are refused by `rule_patches`)."""
    if not is_vit(model):
        raise ConfigError(f"method={method} explains timm ViTs; {type(model).__name__} is not one "
                          "(for a CNN use method=lrp).")
    pool = getattr(model, "global_pool", None)
    if pool not in POOLS or getattr(model, "attn_pool", None) is not None:
        raise ConfigError(f"method={method} supports ViTs pooling by {' or '.join(POOLS)}; "
                          f"{type(model).__name__} has global_pool={pool!r}.")
    for i, blk in enumerate(model.blocks):
        if not (type(blk) is Block and type(blk.attn) is Attention and type(blk.mlp) is Mlp
                and getattr(blk.attn, "gate", None) is None):
            raise ConfigError(
                f"method={method} supports timm ViT blocks (Block, Attention without gate, Mlp); "
                f"block {i} is {type(blk).__name__} with {type(blk.attn).__name__}/"
                f"{type(blk.mlp).__name__}.")


def attention_forward(attn: Attention, conservative: bool,
                      eps: float) -> Callable[..., torch.Tensor]:
    """timm's Attention.forward (fused or explicit, as the module says) with the rules: the
    uniform rule for the two matmuls (AttnLRP) or constant attention probabilities (CP-LRP)."""
    heads, head_dim, dim = attn.num_heads, attn.head_dim, attn.attn_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    # AttnLRP: q and k each get half of half the relevance, v half
    uniform = weight.new_full((3 * dim,), 0.25)
    uniform[2 * dim:] = 0.5

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        bsz, n, _ = x.shape
        if conservative:
            with torch.no_grad():
                qk = F.linear(x, weight[:2 * dim], None if bias is None else bias[:2 * dim])
            v = epsilon_linear(x, weight[2 * dim:], None if bias is None else bias[2 * dim:], eps)
            q, k = qk.reshape(bsz, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            v = v.reshape(bsz, n, heads, head_dim).transpose(1, 2)
        else:
            qkv = epsilon_linear(x, weight, bias, eps, uniform)
            q, k, v = qkv.reshape(bsz, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.fused_attn and not conservative:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:  # CP-LRP: probabilities without grad; the backward is one matmul, A^T g, where
            # the fused kernel's backward would recompute them and the unused q and k gradients
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            scores = maybe_add_mask(scores, resolve_self_attn_mask(n, scores, attn_mask, is_causal))
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = attn.norm(out.transpose(1, 2).reshape(bsz, n, dim))
        return attn.proj_drop(attn.proj(out))

    return forward


def rule_patches(model: nn.Module, method: str, conservative: bool, eps: float,
                 pixels: bool) -> dict[nn.Module, Callable[..., Any]]:
    """The rule-carrying forward of every module that needs one; a module without a rule here
    (another norm or activation, ...) is refused."""
    patches: dict[nn.Module, Callable[..., Any]] = {}
    # the qkv projection's rules are in the attention's forward; fc1's epsilon rule in the
    # MLP activation's ratio (timm's Mlp applies act right after fc1)
    folded = {blk.attn.qkv for blk in model.blocks} | {blk.mlp.fc1 for blk in model.blocks}
    mlp_acts = {blk.mlp.act for blk in model.blocks}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            patches[module] = attention_forward(module, conservative, eps)
        elif isinstance(module, nn.LayerNorm):
            patches[module] = norm_identity(module)
        elif isinstance(module, ACTIVATIONS):
            patches[module] = activation_identity(module, eps if module in mlp_acts else 0.0)
        elif isinstance(module, nn.Linear):
            if eps > 0 and module not in folded:
                patches[module] = linear_epsilon(module, eps)
        elif module is model.patch_embed.proj:
            if pixels and eps > 0:
                patches[module] = conv_epsilon(module, eps)
        elif not isinstance(module, PASSIVE) and next(module.children(), None) is None:
            raise ConfigError(f"method={method} has no LRP rule for {name} "
                              f"({type(module).__name__}).")
    return patches


@contextmanager
def token_leaf(model: nn.Module, leaves: list[torch.Tensor]) -> Iterator[None]:
    """Make the patch embedding's output a leaf that requires grad (relevance is read there and
    the backward stops there: the convolution is never differentiated)."""

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    handle = model.patch_embed.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def lrp_relevance(model: nn.Module, images: torch.Tensor, target: torch.Tensor, method: str,
                  conservative: bool, eps: float, level: str) -> torch.Tensor:
    """Relevance of the target logits, summed over channels: (B, gh, gw) at the patch
    embedding's output (level=tokens) or (B, H, W) at the pixels. One forward, one backward."""
    pixels = level == "pixels"
    for param in model.parameters():  # restored by the caller's model_state
        param.requires_grad_(False)
    leaves: list[torch.Tensor] = []
    x = images.detach().requires_grad_(pixels)
    patches = rule_patches(model, method, conservative, eps, pixels)
    with (patched_forwards(patches), torch.enable_grad(),
          contextlib.nullcontext() if pixels else token_leaf(model, leaves)):
        logits = model(x)
        leaf = x if pixels else leaves[0]
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, leaf)
    if pixels:
        return (x * grad).sum(dim=1).detach()
    relevance = (leaf * grad).sum(dim=-1).detach()
    _, gh, gw = token_grid(model)
    return relevance.reshape(relevance.shape[0], gh, gw) if relevance.dim() == 2 else relevance


@register_method("attnlrp")
class AttnLRP(ExplainMethod):
    """AttnLRP (Achtibat et al., ICML 2024): attention-aware LRP for timm ViTs, computed as one
    forward and one modified backward (the rules in explain/lrp_rules.py)."""

    family = "lrp"
    models: ClassVar[tuple[str, ...]] = ("vit",)
    default_upsample = "bilinear"
    needs_grad = True
    target_in_forward = True  # the relevance forward runs on the images: it gives the target
    conservative: ClassVar[bool] = False

    def __init__(self, epsilon: float = 1e-6, level: str = "tokens", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}; got {level!r}.")
        if not isinstance(epsilon, int | float) or isinstance(epsilon, bool) or epsilon < 0:
            raise ConfigError(f"epsilon must be a number >= 0; got {epsilon!r}.")
        self.epsilon, self.level = float(epsilon), level

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        return Passes(forwards=1, backwards=1)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        check_supported(model, self.name)
        return lrp_relevance(model, images, target, self.name, self.conservative, self.epsilon,
                             self.level)


@register_method("cp_lrp")
class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022; the variant Achtibat et al., ICML 2024 compare with):
    AttnLRP's rules with the attention probabilities held constant, so relevance flows only
    through the values."""

    conservative = True
