"""lxt 2.1 (AttnLRP / CP-LRP, Achtibat et al., ICML 2024) on a timm ViT's weights: the peer of
the `attnlrp` / `cp_lrp` rows of bench_explain.py and the oracle of tests/test_explain_attnlrp.py.

lxt supports torchvision's VisionTransformer, not timm's: `to_torchvision` copies a standard
timm ViT (CLS token, learned position embeddings, no LayerScale / registers / fc_norm) into one.
lxt ships CP-LRP for it (its vit_torch patch map). AttnLRP is assembled from lxt's own parts:
its GELU and LayerNorm patches, and its attention wrapper (uniform rule: gradient / 4 on q and
k, / 2 on v) put on the scaled_dot_product_attention call inside torch's MultiheadAttention.
lxt's linear layers keep the plain gradient (LRP-0: epsilon = 0 in xai_bench's terms).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

VARIANTS = ("attnlrp", "cp_lrp")


def to_torchvision(vit: nn.Module) -> VisionTransformer:
    """torchvision's VisionTransformer with the timm model's weights (same function)."""
    blk0 = vit.blocks[0]
    tv = VisionTransformer(image_size=vit.patch_embed.img_size[0],
                           patch_size=vit.patch_embed.patch_size[0], num_layers=len(vit.blocks),
                           num_heads=blk0.attn.num_heads, hidden_dim=vit.embed_dim,
                           mlp_dim=blk0.mlp.fc1.out_features, num_classes=vit.head.out_features)
    pairs = {"class_token": vit.cls_token, "encoder.pos_embedding": vit.pos_embed,
             "conv_proj.weight": vit.patch_embed.proj.weight,
             "conv_proj.bias": vit.patch_embed.proj.bias,
             "encoder.ln.weight": vit.norm.weight, "encoder.ln.bias": vit.norm.bias,
             "heads.head.weight": vit.head.weight, "heads.head.bias": vit.head.bias}
    for i, blk in enumerate(vit.blocks):
        p = f"encoder.layers.encoder_layer_{i}."
        pairs.update({
            p + "ln_1.weight": blk.norm1.weight, p + "ln_1.bias": blk.norm1.bias,
            p + "self_attention.in_proj_weight": blk.attn.qkv.weight,
            p + "self_attention.in_proj_bias": blk.attn.qkv.bias,
            p + "self_attention.out_proj.weight": blk.attn.proj.weight,
            p + "self_attention.out_proj.bias": blk.attn.proj.bias,
            p + "ln_2.weight": blk.norm2.weight, p + "ln_2.bias": blk.norm2.bias,
            p + "mlp.0.weight": blk.mlp.fc1.weight, p + "mlp.0.bias": blk.mlp.fc1.bias,
            p + "mlp.3.weight": blk.mlp.fc2.weight, p + "mlp.3.bias": blk.mlp.fc2.bias})
    if set(tv.state_dict()) != set(pairs):
        raise ValueError("the torchvision ViT's parameters do not match the timm model's")
    tv.load_state_dict({k: v.detach().clone() for k, v in pairs.items()})
    ref = next(vit.parameters())
    return tv.to(device=ref.device, dtype=ref.dtype).eval()


def lxt_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """lxt's patches and vit_torch map. Its package __init__ files import every model it
    supports (transformers, not installed): stand-in packages let these modules load alone."""
    root = Path(importlib.util.find_spec("lxt").origin).parent
    for name, sub in (("lxt.efficient", "efficient"), ("lxt.efficient.models", "efficient/models")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root / sub)]
            sys.modules[name] = package
    return (importlib.import_module("lxt.efficient.patches"),
            importlib.import_module("lxt.efficient.models.vit_torch"))


@contextmanager
def lxt_patched(variant: str) -> Iterator[None]:
    """lxt's patches on torch.nn's classes (lxt patches classes), undone afterwards."""
    patches, vit_torch = lxt_modules()
    patch_map = dict(vit_torch.cp_LRP)
    originals = {cls: dict(vars(cls)) for cls in patch_map}
    sdpa = F.scaled_dot_product_attention
    if variant == "attnlrp":
        del patch_map[nn.MultiheadAttention]
        wrapped = patches.wrap_attention_forward(
            lambda _m, q, k, v, *a, **kw: sdpa(q, k, v, *a, **kw))
        F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: wrapped(None, q, k, v, *a, **kw)
    try:
        for cls, patch in patch_map.items():
            if not patch(cls):
                raise RuntimeError(f"lxt could not patch {cls.__name__}")
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
        for cls, attrs in originals.items():
            for key in ("forward", "original_forward"):
                if key in attrs:
                    setattr(cls, key, attrs[key])
                elif key in vars(cls):
                    delattr(cls, key)


def lxt_relevance(tv: VisionTransformer, x: torch.Tensor, target: torch.Tensor, variant: str,
                  level: str = "tokens") -> torch.Tensor:
    """lxt's relevance of the target logits summed over channels, at the patch embedding's
    output ((B, gh, gw), the backward stops there) or at the pixels ((B, H, W))."""
    leaves: list[torch.Tensor] = []

    def leaf(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        leaves.append(out.detach().requires_grad_(True))
        return leaves[-1]

    handle = tv.conv_proj.register_forward_hook(leaf) if level == "tokens" else None
    x = x.detach().clone().requires_grad_(level == "pixels")
    try:
        with lxt_patched(variant), torch.enable_grad():
            logits = tv(x)
            at = leaves[0] if level == "tokens" else x
            (grad,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), at)
    finally:
        if handle is not None:
            handle.remove()
    return (at * grad).sum(1).detach()


def lxt_peers(model: nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """The bench rows' peer calls (token level, as the rows' default), or none where lxt is not
    installed or the model has no torchvision equivalent."""
    try:
        lxt_modules()
        tv = to_torchvision(model)
    except (ImportError, AttributeError, ValueError, TypeError):
        return {}
    for param in tv.parameters():
        param.requires_grad_(False)
    return {name: (lambda x, t, v=name: lxt_relevance(tv, x, t, v)) for name in VARIANTS}
