"""Chefer et al. CVPR 2021 "Transformer Interpretability Beyond Attention Visualization".

The study's ViT method (docs/methods.md): LRP relevance R_A_b of every block's attention
probabilities, A_b = mean_heads((grad_A_b * R_A_b).clamp(min=0)), C = prod_b (I + A_b) from
`start_layer` without row normalisation, map = C[CLS, patches].

The paper's code needs a re-implemented ViT whose every layer has a `relprop`. Here the timm
model's own modules and weights are run block by block (so the logits are the model's), the
activations are kept, and the relevance is propagated back by hand with the paper's rules:
  Linear           alpha=1, beta=0 (z+) rule, biases ignored
  matmul (A@v, q@k^T)  gradient x input on both operands, each operand gets half
  residual add     split in proportion to the z-contributions, rescaled per image so each
                   branch gets its |share| of the incoming total (conserved)
  clone (skip)     the two branches' relevances add up
  LayerNorm, GELU, softmax, dropout, LayerScale, drop-path, the attention scale: identity
Everything is batched: per-image sums in the residual rule, no loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerScale, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from xai_bench.explain.attention import (
    check_cls_model,
    cls_row_to_grid,
    generic_relevance,
    resolve_layer,
)
from xai_bench.explain.base import ExplainMethod, register_method
from xai_bench.utils.errors import ConfigError

EPS = 1e-9


def safe_divide(num: torch.Tensor, den: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """num / den with den pushed away from 0 by eps (keeping its sign); 0 where den == 0."""
    stable = den + eps * torch.where(den >= 0, 1.0, -1.0).to(den.dtype)
    return torch.where(den == 0, 0.0, num / stable)


def relprop_linear(x: torch.Tensor, weight: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """alpha=1, beta=0: relevance flows along the positive contributions x_i w_ji > 0 only."""
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    px, nx = x.clamp(min=0), x.clamp(max=0)
    z = F.linear(px, pw) + F.linear(nx, nw)
    s = safe_divide(rel, z)
    return px * (s @ pw) + nx * (s @ nw)


def relprop_add(a: torch.Tensor, b: torch.Tensor,
                rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add out = a + b: z-proportional split, rescaled so the per-image total is kept."""
    dims = tuple(range(1, rel.dim()))
    s = safe_divide(rel, a + b)
    ra, rb = a * s, b * s
    a_sum, b_sum = ra.sum(dim=dims, keepdim=True), rb.sum(dim=dims, keepdim=True)
    total = rel.sum(dim=dims, keepdim=True)
    a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * total
    b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * total
    return ra * safe_divide(a_fact, a_sum), rb * safe_divide(b_fact, b_sum)


def relprop_matmul(a: torch.Tensor, b: torch.Tensor,
                   rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """out = a @ b: gradient x input for each operand (each then sums to the total), halved."""
    s = safe_divide(rel, a @ b)
    return 0.5 * a * (s @ b.transpose(-2, -1)), 0.5 * b * (a.transpose(-2, -1) @ s)


@dataclass
class BlockTape:
    """What one block's forward keeps for the relevance pass."""

    x_in: torch.Tensor  # block input (B, N, C)
    h1: torch.Tensor  # norm1 output = qkv input
    q: torch.Tensor  # (B, H, N, d), scaled
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor  # softmax probabilities (B, H, N, N)
    o_in: torch.Tensor  # proj input (B, N, H*d)
    y_attn: torch.Tensor  # attention branch output added to x_in
    x_mid: torch.Tensor  # after the first residual
    h2: torch.Tensor  # fc1 input
    m: torch.Tensor  # fc2 input
    y_mlp: torch.Tensor  # MLP branch output added to x_mid


def check_supported(model: nn.Module) -> None:
    """Refuse ViT variants the hand-written forward / relevance pass does not reproduce."""
    check_cls_model(model)
    name = type(model).__name__
    if (getattr(model, "global_pool", None) != "token"
            or getattr(model, "attn_pool", None) is not None):
        raise ConfigError(
            f"method=chefer supports ViTs classifying from the CLS token (global_pool='token'); "
            f"{name} has global_pool={getattr(model, 'global_pool', None)!r}."
        )
    heads = [model.head] + ([model.head_dist] if hasattr(model, "head_dist") else [])
    if not all(isinstance(h, nn.Linear) for h in heads):
        raise ConfigError(f"method=chefer needs a linear classifier head; "
                          f"{name}.head is {type(model.head).__name__}.")
    for i, blk in enumerate(model.blocks):
        ok = (type(blk) is Block and type(blk.attn) is Attention
              and getattr(blk.attn, "gate", None) is None and type(blk.mlp) is Mlp
              and all(isinstance(ls, nn.Identity | LayerScale) for ls in (blk.ls1, blk.ls2)))
        if not ok:
            raise ConfigError(
                "method=chefer supports timm ViT blocks "
                "(Block with timm Attention, no gate, Mlp); "
                f"block {i} of {name} is {type(blk).__name__} with {type(blk.attn).__name__}/"
                f"{type(blk.mlp).__name__}. Use method=chefer_generic or rollout for this model."
            )


def forward_with_tape(model: nn.Module, images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, list[BlockTape]]:
    """Run the timm ViT with its own modules, keeping activations: (logits, final tokens, tapes).

    Mirrors VisionTransformer.forward in eval mode (the distilled DeiT head averages its two
    heads, as timm does at inference).
    """
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    tapes: list[BlockTape] = []
    for blk in model.blocks:
        attn_mod: Attention = blk.attn
        x_in = x
        h1 = blk.norm1(x_in)
        bsz, n, _ = h1.shape
        qkv = attn_mod.qkv(h1).reshape(bsz, n, 3, attn_mod.num_heads,
                                       attn_mod.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn_mod.q_norm(q) * attn_mod.scale, attn_mod.k_norm(k)
        probs = attn_mod.attn_drop((q @ k.transpose(-2, -1)).softmax(dim=-1))
        o_in = attn_mod.norm((probs @ v).transpose(1, 2).reshape(bsz, n, attn_mod.attn_dim))
        y_attn = blk.drop_path1(blk.ls1(attn_mod.proj_drop(attn_mod.proj(o_in))))
        x_mid = x_in + y_attn
        mlp: Mlp = blk.mlp
        h2 = blk.norm2(x_mid)
        m = mlp.norm(mlp.drop1(mlp.act(mlp.fc1(h2))))
        y_mlp = blk.drop_path2(blk.ls2(mlp.drop2(mlp.fc2(m))))
        x = x_mid + y_mlp
        tapes.append(BlockTape(x_in, h1, q, k, v, probs, o_in, y_attn, x_mid, h2, m, y_mlp))
    tokens = model.norm(x)
    logits = head_forward(model, tokens)
    return logits, tokens, tapes


def head_inputs(model: nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The pooled vectors each linear head reads: CLS (and the distillation token).

    As in timm: fc_norm (identity for global_pool='token') on the CLS token; the distilled
    DeiT head reads tokens 0 and 1 without fc_norm.
    """
    if hasattr(model, "head_dist"):
        return [model.head_drop(tokens[:, 0]), model.head_drop(tokens[:, 1])]
    return [model.head_drop(model.fc_norm(tokens[:, 0]))]


def head_forward(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    pooled = head_inputs(model, tokens)
    if len(pooled) == 1:
        return model.head(pooled[0])
    return (model.head(pooled[0]) + model.head_dist(pooled[1])) / 2


def relprop_head(model: nn.Module, tokens: torch.Tensor, rel_out: torch.Tensor) -> torch.Tensor:
    """Relevance at the final tokens (B, N, C) from relevance at the logits (B, classes).

    The distilled head (W1 x_cls + W2 x_dist) / 2 is one linear layer on [x_cls, x_dist].
    """
    pooled = head_inputs(model, tokens)
    rel_tokens = torch.zeros_like(tokens)
    if len(pooled) == 1:
        rel_tokens[:, 0] = relprop_linear(pooled[0], model.head.weight, rel_out)
        return rel_tokens
    weight = torch.cat([model.head.weight, model.head_dist.weight], dim=1) / 2
    rel_in = relprop_linear(torch.cat(pooled, dim=1), weight, rel_out)
    rel_tokens[:, 0], rel_tokens[:, 1] = rel_in.split(tokens.shape[-1], dim=1)
    return rel_tokens


def relprop_block(blk: nn.Module, tape: BlockTape,
                  rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance at the block input and at the attention probabilities, from the block output."""
    # x_out = x_mid + y_mlp
    rel_mid_skip, rel_y_mlp = relprop_add(tape.x_mid, tape.y_mlp, rel)
    rel_m = relprop_linear(tape.m, blk.mlp.fc2.weight, rel_y_mlp)  # ls2/drop/norm: identity
    rel_h2 = relprop_linear(tape.h2, blk.mlp.fc1.weight, rel_m)  # act: identity
    rel_mid = rel_mid_skip + rel_h2  # norm2: identity; clone: sum
    # x_mid = x_in + y_attn
    rel_in_skip, rel_y_attn = relprop_add(tape.x_in, tape.y_attn, rel_mid)
    rel_o = relprop_linear(tape.o_in, blk.attn.proj.weight, rel_y_attn)
    bsz, heads, n, d = tape.v.shape
    rel_o = rel_o.reshape(bsz, n, heads, d).transpose(1, 2)
    rel_attn, rel_v = relprop_matmul(tape.attn, tape.v, rel_o)
    rel_q, rel_k = relprop_matmul(tape.q, tape.k.transpose(-2, -1), rel_attn)  # softmax: identity
    rel_qkv = torch.stack([rel_q, rel_k.transpose(-2, -1), rel_v])  # (3, B, H, N, d)
    rel_qkv = rel_qkv.permute(1, 3, 0, 2, 4).reshape(bsz, n, 3 * heads * d)
    rel_h1 = relprop_linear(tape.h1, blk.attn.qkv.weight, rel_qkv)
    return rel_in_skip + rel_h1, rel_attn


def lrp_attention(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(attention probs, their gradients, their LRP relevances, relevance at the block-0 input).

    One forward with the model's modules, one autograd pass for d(target logit)/dA (the batch
    sum gives per-image gradients), then the relevance pass from R_out = one_hot(target).
    """
    check_supported(model)
    with torch.enable_grad():
        logits, tokens, tapes = forward_with_tape(model, images.detach().requires_grad_(True))
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        grads = torch.autograd.grad(score, [t.attn for t in tapes], allow_unused=True)
    grads = [torch.zeros_like(t.attn) if g is None else g.detach()
             for t, g in zip(tapes, grads, strict=True)]
    with torch.no_grad():
        tokens = tokens.detach()
        tapes = [BlockTape(*(getattr(t, f).detach() for f in BlockTape.__dataclass_fields__))
                 for t in tapes]
        rel_out = F.one_hot(target.to(logits.device), logits.shape[1]).to(logits.dtype)
        rel = relprop_head(model, tokens, rel_out)  # model.norm: identity
        rel_attns: list[torch.Tensor] = [torch.empty(0)] * len(tapes)
        for i in reversed(range(len(tapes))):
            rel, rel_attns[i] = relprop_block(model.blocks[i], tapes[i], rel)
    return [t.attn for t in tapes], grads, rel_attns, rel


def transformer_attribution(grads: list[torch.Tensor], rel_attns: list[torch.Tensor],
                            start_layer: int = 0) -> torch.Tensor:
    """C = prod_b (I + mean_heads((grad_A_b * R_A_b).clamp(min=0))), b >= start_layer. (B, N, N).

    The same unnormalised rollout as the ICCV 2021 generic method, with the LRP relevance R_A
    in place of the attention itself.
    """
    return generic_relevance(rel_attns, grads, start_layer)


@register_method("chefer")
class CheferLRP(ExplainMethod):
    """The study's ViT method: Chefer CVPR 2021 transformer attribution (LRP x gradient rollout)."""

    default_upsample = "bilinear"
    needs_grad = True

    def __init__(self, start_layer: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_layer = start_layer

    def attribution(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        """The full (B, N, N) rolled-out matrix C."""
        resolve_layer(self.start_layer, len(model.blocks), "start_layer")
        _, grads, rel_attns, _ = lrp_attention(model, images, target)
        return transformer_attribution(grads, rel_attns, self.start_layer)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        prefix, gh, gw = check_cls_model(model)
        return cls_row_to_grid(self.attribution(model, images, target), prefix, gh, gw)
