"""Chefer et al. CVPR 2021 "Transformer Interpretability Beyond Attention Visualization".

The study's ViT method (docs/methods.md): LRP relevance R_A_b of every block's attention
probabilities, A_b = mean_heads((grad_A_b * R_A_b).clamp(min=0)), C = prod_b (I + A_b) from
`start_layer` without row normalisation, map = C[CLS, patches].

The paper's code needs a re-implemented ViT whose every layer has a `relprop`. Here the timm
model runs its own forward (its logits; that forward also resolves the target) with hooks that
keep the activations, one backward gives d(logit)/dA, and the relevance is propagated back by
hand, from the last block down to `start_layer`'s attention, with the paper's rules:
  Linear           alpha=1, beta=0 (z+) rule, biases ignored
  matmul (A@v, q@k^T)  gradient x input on both operands, each operand gets half
  residual add     split in proportion to the z-contributions, rescaled per image so each
                   branch gets its |share| of the incoming total (conserved)
  clone (skip)     the two branches' relevances add up
  LayerNorm, GELU, softmax, dropout, LayerScale, drop-path, the attention scale: identity
Everything is batched: per-image sums in the residual rule, no loop over images; only the
CLS row of C is formed (vector x matrix per block). Why the relevance pass is not a modified
backward as in explain/attnlrp.py: the map needs BOTH the plain gradient and the relevance at
every attention map, so a backward carrying the relevance would not replace the gradient's.
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
    generic_relevance,
    resolve_layer,
)
from xai_bench.explain.base import ExplainMethod, Passes, register_method
from xai_bench.explain.vit_geometry import explicit_attention
from xai_bench.utils.errors import ConfigError

EPS = 1e-9


def safe_divide(num: torch.Tensor, den: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """num / den with den pushed away from 0 by eps (keeping its sign); 0 where den == 0.

    Written num * sign(den) / (|den| + eps): the same value (negation is exact), no branches."""
    return num * den.sign() / (den.abs() + eps)


def relprop_linear(x: torch.Tensor, weight: torch.Tensor, rel: torch.Tensor,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """alpha=1, beta=0: relevance flows along the positive contributions x_i w_ji > 0 only.

    With (x w)+ = (x w + |x| |w|) / 2, the positive part z+ = (x W^T + |x| |W|^T) / 2 needs one
    matmul beyond the layer's own product `out` (x W^T, bias excluded; taped by the caller or
    recomputed), and the redistribution x+ (s W+) + x- (s W-) = (x (s W) + |x| (s |W|)) / 2 one
    matmul of s by [W, |W|]: three matmuls per layer instead of four. Where |x| |W|^T says that
    z+ is within rounding of zero (every contribution <= 0), z+ is 0 and so is the relevance
    passed on, as in the four-matmul form.
    """
    pos = x.abs()
    wabs = weight.abs()
    total = F.linear(pos, wabs)  # sum_i |x_i w_ji|
    z = ((F.linear(x, weight) if out is None else out) + total) * 0.5
    zero = z <= total * (8 * torch.finfo(z.dtype).eps)
    s = (rel / (z + EPS)).masked_fill_(zero, 0)
    both = s @ torch.cat([weight, wabs], dim=1)  # (.., 2 in): s W and s |W| in one matmul
    grad, grad_abs = both.split(weight.shape[1], dim=-1)
    return (x * grad + pos * grad_abs) * 0.5


def relprop_add(a: torch.Tensor, b: torch.Tensor,
                rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add out = a + b: z-proportional split, rescaled so the per-image total is kept."""
    dims = tuple(range(1, rel.dim()))
    s = safe_divide(rel, a + b)
    ra, rb = a * s, b * s
    sums = torch.stack([ra.sum(dim=dims), rb.sum(dim=dims)])  # (2, B): both branches at once
    total = rel.sum(dim=dims)
    shares = safe_divide(sums.abs(), sums.abs().sum(dim=0)) * total
    fa, fb = safe_divide(shares, sums).view(2, -1, *([1] * (rel.dim() - 1))).unbind(0)
    return ra * fa, rb * fb


def relprop_matmul(a: torch.Tensor, b: torch.Tensor, rel: torch.Tensor, need_b: bool = True,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out = a @ b (taped by the caller or recomputed): gradient x input for each operand (each
    then sums to the total), halved (b's relevance: None without `need_b`)."""
    s = safe_divide(rel, a @ b if out is None else out)
    rel_b = 0.5 * b * (a.transpose(-2, -1) @ s) if need_b else None
    return 0.5 * a * (s @ b.transpose(-2, -1)), rel_b


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
    # the linear layers' products x W^T without their biases (the z+ rule's x W^T)
    z_qkv: torch.Tensor
    z_proj: torch.Tensor
    z_fc1: torch.Tensor
    z_fc2: torch.Tensor


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
    """Run the model (its own forward, so its forward hooks see it and the logits are its own)
    with hooks keeping every block's activations: (logits, final tokens, tapes).

    Attention is computed explicitly meanwhile (timm's fused kernel never forms the
    probabilities); the fused flags are restored afterwards.
    """
    seen: list[dict[str, torch.Tensor]] = [{} for _ in model.blocks]
    final: dict[str, torch.Tensor] = {}
    handles = [model.norm.register_forward_hook(lambda _m, _i, out: final.update(tokens=out))]

    def keep(rec: dict[str, torch.Tensor], key: str, pre: bool = False) -> Any:
        if pre:
            return lambda _m, args: rec.update({key: args[0]})
        return lambda _m, _i, out: rec.update({key: out})

    for blk, rec in zip(model.blocks, seen, strict=True):
        attn_mod: Attention = blk.attn
        handles += [blk.register_forward_pre_hook(keep(rec, "x_in", pre=True)),
                    blk.norm1.register_forward_hook(keep(rec, "h1")),
                    attn_mod.qkv.register_forward_hook(keep(rec, "qkv")),
                    attn_mod.attn_drop.register_forward_pre_hook(keep(rec, "attn", pre=True)),
                    attn_mod.proj.register_forward_pre_hook(keep(rec, "o_in", pre=True)),
                    attn_mod.proj.register_forward_hook(keep(rec, "proj")),
                    blk.mlp.fc1.register_forward_hook(keep(rec, "fc1")),
                    blk.mlp.fc2.register_forward_hook(keep(rec, "fc2")),
                    blk.drop_path1.register_forward_hook(keep(rec, "y_attn")),
                    blk.norm2.register_forward_hook(keep(rec, "h2")),
                    blk.mlp.fc2.register_forward_pre_hook(keep(rec, "m", pre=True)),
                    blk.drop_path2.register_forward_hook(keep(rec, "y_mlp"))]
    try:
        with explicit_attention(model):
            logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    tapes = []
    for blk, rec in zip(model.blocks, seen, strict=True):
        attn_mod = blk.attn
        qkv = rec["qkv"].detach()
        bsz, n, _ = qkv.shape
        q, k, v = qkv.reshape(bsz, n, 3, attn_mod.num_heads,
                              attn_mod.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        with torch.no_grad():
            q, k = attn_mod.q_norm(q) * attn_mod.scale, attn_mod.k_norm(k)
            x_mid = rec["x_in"] + rec["y_attn"]
            z = [_unbiased(rec[key].detach(), layer) for key, layer in (
                ("qkv", attn_mod.qkv), ("proj", attn_mod.proj), ("fc1", blk.mlp.fc1),
                ("fc2", blk.mlp.fc2))]
        tapes.append(BlockTape(rec["x_in"], rec["h1"], q, k, v, rec["attn"], rec["o_in"],
                               rec["y_attn"], x_mid, rec["h2"], rec["m"], rec["y_mlp"], *z))
    return logits, final["tokens"], tapes


def _unbiased(out: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return out if layer.bias is None else out - layer.bias


def head_inputs(model: nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The pooled vectors each linear head reads: CLS (and the distillation token).

    As in timm: fc_norm (identity for global_pool='token') on the CLS token; the distilled
    DeiT head reads tokens 0 and 1 without fc_norm.
    """
    if hasattr(model, "head_dist"):
        return [model.head_drop(tokens[:, 0]), model.head_drop(tokens[:, 1])]
    return [model.head_drop(model.fc_norm(tokens[:, 0]))]


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


def relprop_block(blk: nn.Module, tape: BlockTape, rel: torch.Tensor,
                  need_input: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Relevance at the block input (None without `need_input`: the pass stops at the
    attention) and at the attention probabilities, from the block output."""
    # x_out = x_mid + y_mlp
    rel_mid_skip, rel_y_mlp = relprop_add(tape.x_mid, tape.y_mlp, rel)
    rel_m = relprop_linear(tape.m, blk.mlp.fc2.weight, rel_y_mlp, tape.z_fc2)  # ls2: identity
    rel_h2 = relprop_linear(tape.h2, blk.mlp.fc1.weight, rel_m, tape.z_fc1)  # act: identity
    rel_mid = rel_mid_skip + rel_h2  # norm2: identity; clone: sum
    # x_mid = x_in + y_attn
    rel_in_skip, rel_y_attn = relprop_add(tape.x_in, tape.y_attn, rel_mid)
    rel_o = relprop_linear(tape.o_in, blk.attn.proj.weight, rel_y_attn, tape.z_proj)
    bsz, heads, n, d = tape.v.shape
    rel_o = rel_o.reshape(bsz, n, heads, d).transpose(1, 2)
    o = tape.o_in.reshape(bsz, n, heads, d).transpose(1, 2)  # attn @ v, as the forward made it
    if not need_input:
        return None, relprop_matmul(tape.attn, tape.v, rel_o, need_b=False, out=o)[0]
    rel_attn, rel_v = relprop_matmul(tape.attn, tape.v, rel_o, out=o)
    rel_q, rel_k = relprop_matmul(tape.q, tape.k.transpose(-2, -1), rel_attn)  # softmax: identity
    rel_qkv = torch.stack([rel_q, rel_k.transpose(-2, -1), rel_v])  # (3, B, H, N, d)
    rel_qkv = rel_qkv.permute(1, 3, 0, 2, 4).reshape(bsz, n, 3 * heads * d)
    rel_h1 = relprop_linear(tape.h1, blk.attn.qkv.weight, rel_qkv, tape.z_qkv)
    return rel_in_skip + rel_h1, rel_attn


def lrp_attention(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor, start_layer: int = 0,
    input_relevance: bool = True,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """(attention probs, their gradients, their LRP relevances, relevance at the block-0 input).

    One forward of the model (its forward hooks see it: a caller's target hook resolves
    `target` in place before it is read), one autograd pass for d(target logit)/dA (the batch
    sum gives per-image gradients), then the relevance pass from R_out = one_hot(target).
    Blocks before `start_layer` get zero gradients and relevances; without `input_relevance`
    the relevance pass stops at block `start_layer`'s attention (and None is returned).
    """
    check_supported(model)
    with torch.enable_grad():
        logits, tokens, tapes = forward_with_tape(model, images.detach().requires_grad_(True))
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        grads = torch.autograd.grad(score, [t.attn for t in tapes[start_layer:]],
                                    allow_unused=True)
    grads = [torch.zeros_like(t.attn) for t in tapes[:start_layer]] + [
        torch.zeros_like(t.attn) if g is None else g.detach()
        for t, g in zip(tapes[start_layer:], grads, strict=True)]
    with torch.no_grad():
        tokens = tokens.detach()
        tapes = [BlockTape(*(getattr(t, f).detach() for f in BlockTape.__dataclass_fields__))
                 for t in tapes]
        rel_out = F.one_hot(target.to(logits.device), logits.shape[1]).to(logits.dtype)
        rel: torch.Tensor | None = relprop_head(model, tokens, rel_out)  # model.norm: identity
        rel_attns = [torch.zeros_like(t.attn) if i < start_layer and not input_relevance
                     else t.attn for i, t in enumerate(tapes)]  # each replaced below
        for i in reversed(range(start_layer if not input_relevance else 0, len(tapes))):
            rel, rel_attns[i] = relprop_block(model.blocks[i], tapes[i], rel,
                                              need_input=input_relevance or i > start_layer)
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

    family = "lrp"
    models = ("vit",)
    default_upsample = "bilinear"
    needs_grad = True
    target_in_forward = True  # the taped forward is the model's own: it gives the target

    def __init__(self, start_layer: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_layer = start_layer

    def attribution(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        """The full (B, N, N) rolled-out matrix C."""
        start = resolve_layer(self.start_layer, len(model.blocks), "start_layer")
        _, grads, rel_attns, _ = lrp_attention(model, images, target, start, False)
        return transformer_attribution(grads, rel_attns, start)

    def explain_raw(self, model: nn.Module, images: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
        """Row 0 of C only: e_0^T prod_b (I + A_b), vector by matrix from the last block down."""
        prefix, gh, gw = check_cls_model(model)
        start = resolve_layer(self.start_layer, len(model.blocks), "start_layer")
        _, grads, rel_attns, _ = lrp_attention(model, images, target, start, False)
        row = torch.zeros_like(rel_attns[0][:, 0, 0])  # (B, N)
        row[:, 0] = 1
        for grad, rel in list(zip(grads, rel_attns, strict=True))[start:][::-1]:
            cam = (grad * rel).clamp(min=0).mean(dim=1)
            row = row + (row.unsqueeze(1) @ cam).squeeze(1)
        return row[:, prefix:].reshape(row.shape[0], gh, gw)

    def passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """The taped forward (the model's own: it resolves the target) and one backward to the
        attention maps (the relevance pass by hand is not a model pass)."""
        return Passes(forwards=1, backwards=1)
