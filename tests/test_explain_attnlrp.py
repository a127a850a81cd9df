"""AttnLRP and CP-LRP (Achtibat et al., ICML 2024) on tiny timm ViTs.

Oracle: lxt 2.1's efficient rules on a torchvision VisionTransformer carrying the same weights
(lxt supports torchvision's ViT, not timm's; scripts/bench_lxt.py, shared with the benchmark,
says how each variant is assembled from lxt's parts). lxt's linear layers use the plain
gradient, so these compare at epsilon=0.
epsilon > 0 is checked against an explicit relevance computation on a one-block ViT written
from the paper's rules (no autograd), and CP-LRP's conservation with the biases zeroed.
"""

from __future__ import annotations

import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from torch import nn

from xai_bench.explain import build_method
from xai_bench.utils.errors import ConfigError

sys.path.insert(0, str(REPO_ROOT / "scripts"))
try:
    from bench_lxt import lxt_relevance, to_torchvision
finally:
    sys.path.remove(str(REPO_ROOT / "scripts"))

TINY = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=3)


def tiny_vit(depth: int = 2, seed: int = 0, fused: bool = True, **kwargs: object) -> nn.Module:
    """A timm ViT with every weight random (biases, LayerNorm affines, tokens included)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", **{**TINY, "depth": depth, **kwargs})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("weight") and param.dim() > 1:
                param.normal_(0, 1.2 / param.shape[1] ** 0.5 if param.dim() == 2 else 0.1)
            else:
                param.normal_(0, 0.3)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    return model.double().eval()


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variant", ["attnlrp", "cp_lrp"])
def test_matches_lxt_on_the_same_weights(variant: str, fused: bool) -> None:
    vit = tiny_vit(fused=fused)
    tv = to_torchvision(vit)
    x = images()
    with torch.no_grad():
        assert torch.allclose(tv(x), vit(x), atol=1e-10)  # the two models are the same function
    target = torch.tensor([0, 2, 1])
    ref_tokens = lxt_relevance(tv, x, target, variant, "tokens")
    for level, ref in (("tokens", ref_tokens), ("pixels", lxt_relevance(tv, x, target, variant,
                                                                        "pixels"))):
        ours = build_method(variant, epsilon=0.0, level=level)(vit, x, target=target).raw
        assert ours.shape == ref.shape
        scale = ref.abs().flatten(1).max(1).values.view(-1, 1, 1)
        # lxt divides by (x + 1e-10) in its GELU rule: agreement to ~1e-8 of the map's scale
        assert ((ours - ref).abs() / scale).max() < 1e-6, (variant, level)
    # the variants differ (the attention path carries relevance in AttnLRP)
    if variant == "attnlrp":
        cp = build_method("cp_lrp", epsilon=0.0)(vit, x, target=target).raw
        assert (cp - ref_tokens).abs().max() > 1e-3


def explicit_lrp(vit: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float,
                 conservative: bool) -> torch.Tensor:
    """Relevance at the patch tokens of a ONE-block ViT, propagated layer by layer with the
    rules written as divisions (no autograd): epsilon for linears, LRP-0 for the LayerNorm's
    centring (std fixed), identity for GELU, Prop. 3.1 for softmax, uniform split for the two
    matmuls (or constant attention)."""
    blk, attn = vit.blocks[0], vit.blocks[0].attn
    heads, hd = attn.num_heads, attn.head_dim

    def stab(z: torch.Tensor, e: float) -> torch.Tensor:
        return z + e * torch.where(z >= 0, 1.0, -1.0).double()

    def linear(inp: torch.Tensor, lin: nn.Linear, rel: torch.Tensor) -> torch.Tensor:
        return inp * ((rel / stab(lin(inp), eps)) @ lin.weight)

    def norm(inp: torch.Tensor, ln: nn.LayerNorm, rel: torch.Tensor) -> torch.Tensor:
        u = rel / ln(inp) * ln.weight / (inp.var(-1, unbiased=False, keepdim=True)
                                         + ln.eps).sqrt()
        return inp * (u - u.mean(-1, keepdim=True))

    with torch.no_grad():
        p = vit.patch_embed(x)
        x0 = vit._pos_embed(p)
        h1 = blk.norm1(x0)
        b, n, d = h1.shape
        q, k, v = attn.qkv(h1).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        s = (q * attn.scale) @ k.transpose(-2, -1)
        a = s.softmax(-1)
        o = a @ v
        o2 = o.transpose(1, 2).reshape(b, n, d)
        x1 = x0 + attn.proj(o2)
        h2 = blk.norm2(x1)
        f = blk.mlp.fc1(h2)
        x2 = x1 + blk.mlp.fc2(blk.mlp.act(f))
        t = vit.norm(x2)
        logits = vit.head(t[:, 0])
        r_logit = F.one_hot(target, logits.shape[1]) * logits
        r_t = torch.zeros_like(t)
        r_t[:, 0] = linear(t[:, 0], vit.head, r_logit)
        r_x2 = norm(x2, vit.norm, r_t)
        r_m = r_x2 * (x2 - x1) / x2  # residual: z-proportional
        r_x1 = r_x2 * x1 / x2 + norm(x1, blk.norm2,
                                     linear(h2, blk.mlp.fc1, linear(blk.mlp.act(f), blk.mlp.fc2,
                                                                    r_m)))
        r_y = r_x1 * (x1 - x0) / x1
        r_o = linear(o2, attn.proj, r_y).reshape(b, n, heads, hd).transpose(1, 2)
        share = 1.0 if conservative else 0.5
        r_v = share * v * (a.transpose(-2, -1) @ (r_o / o))
        if conservative:
            r_q = r_k = torch.zeros_like(q)
        else:
            r_a = 0.5 * a * ((r_o / o) @ v.transpose(-2, -1))
            r_s = s * (r_a - a * r_a.sum(-1, keepdim=True))  # Prop. 3.1: x (R - s sum R) / x
            r_q = 0.5 * q * ((r_s / s) @ (k * attn.scale))
            r_k = 0.5 * k * ((r_s / s).transpose(-2, -1) @ (q * attn.scale))
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * d)
        r_x0 = r_x1 * x0 / x1 + norm(x0, blk.norm1, linear(h1, attn.qkv, r_qkv))
        return (r_x0[:, 1:] * p / x0[:, 1:]).sum(-1).reshape(b, 4, 4)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.05])
@pytest.mark.parametrize("variant", ["attnlrp", "cp_lrp"])
def test_one_block_hand_computation(variant: str, eps: float, fused: bool) -> None:
    vit, x = tiny_vit(depth=1, seed=3, fused=fused), images(2, seed=4)
    target = torch.tensor([1, 2])
    ref = explicit_lrp(vit, x, target, eps, conservative=variant == "cp_lrp")
    ours = build_method(variant, epsilon=eps)(vit, x, target=target).raw
    assert torch.allclose(ours, ref, rtol=1e-8, atol=1e-10 * ref.abs().max())
    if eps:  # epsilon absorbs relevance: the maps move
        assert (ours - build_method(variant, epsilon=0.0)(vit, x, target=target).raw
                ).abs().max() > 1e-4 * ref.abs().max()


def test_cp_lrp_conserves_relevance_without_biases() -> None:
    """Without biases, position embeddings and a CLS token, every CP-LRP rule conserves: the
    patch relevances sum to the logit (AttnLRP's softmax absorbs some: it does not)."""
    vit = tiny_vit(depth=2, seed=5)
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if name.endswith("bias") or name in ("pos_embed", "cls_token"):
                param.zero_()
    x, target = images(3, seed=6), torch.tensor([0, 1, 2])
    with torch.no_grad():
        logit = vit(x).gather(1, target.view(-1, 1)).view(-1)
    for level in ("tokens", "pixels"):
        total = build_method("cp_lrp", epsilon=0.0, level=level)(vit, x, target=target).raw
        assert torch.allclose(total.sum((1, 2)), logit, rtol=1e-9, atol=1e-12)
    attn_total = build_method("attnlrp", epsilon=0.0)(vit, x, target=target).raw.sum((1, 2))
    assert not torch.allclose(attn_total, logit, rtol=1e-3)


def test_batched_equals_per_image_and_model_untouched() -> None:
    vit, x = tiny_vit(), images(4, seed=7)
    flags = [blk.attn.fused_attn for blk in vit.blocks]
    with torch.no_grad():
        before = vit(x)
    calls: list[int] = []
    handle = vit.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    method = build_method("attnlrp", level="pixels")
    out = method(vit, x)
    handle.remove()
    assert calls == [4]  # the one forward also resolved the target: passes = 1 F + 1 B
    assert method.passes(vit, 32, 32).forwards == 1 and method.passes(vit, 32, 32).backwards == 1
    assert torch.equal(out.target, before.argmax(1))
    single = torch.cat([method(vit, x[i:i + 1]).raw for i in range(4)])
    assert torch.allclose(out.raw, single, atol=1e-12)
    with torch.no_grad():
        assert torch.equal(vit(x), before)
    assert [blk.attn.fused_attn for blk in vit.blocks] == flags
    assert all("forward" not in vars(m) for m in vit.modules())  # the patches are gone
    assert all(p.requires_grad for p in vit.parameters())


def test_float32_and_maps() -> None:
    vit = tiny_vit().float()
    out = build_method("cp_lrp")(vit, images(2).float())
    assert out.maps.shape == (2, 32, 32) and out.raw.shape == (2, 4, 4)
    assert torch.isfinite(out.maps).all() and out.maps.max() <= 1 + 1e-6


def test_refusals() -> None:
    cnn = timm.create_model("resnet18", num_classes=2).eval()
    with pytest.raises(ConfigError, match="method=lrp"):
        build_method("attnlrp")(cnn, torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="level"):
        build_method("cp_lrp", level="patches")
    with pytest.raises(ConfigError, match="epsilon"):
        build_method("attnlrp", epsilon=-1.0)
    map_pool = timm.create_model("vit_tiny_patch16_224", **{**TINY, "depth": 1},
                               global_pool="map").eval()
    with pytest.raises(ConfigError, match="global_pool"):
        build_method("attnlrp")(map_pool, torch.randn(1, 3, 32, 32))
    relu_mlp = timm.create_model("vit_tiny_patch16_224", **{**TINY, "depth": 1},
                                 act_layer=nn.ReLU).eval()
    with pytest.raises(ConfigError, match="no LRP rule"):
        build_method("cp_lrp")(relu_mlp, torch.randn(1, 3, 32, 32))


def test_epsilon_rule_of_a_linear_and_a_conv_layer() -> None:
    """One layer by hand: R_in = x * W^T (R_out / (z + eps sign z)) (Gradient x Input form: the
    gradient reaching the output is R_out / z)."""
    from xai_bench.explain.lrp_rules import conv_epsilon, linear_epsilon

    g = torch.Generator().manual_seed(8)
    lin, conv = nn.Linear(5, 4).double(), nn.Conv2d(3, 4, 2, stride=2).double()
    for layer, patched, x in (
        (lin, linear_epsilon(lin, 0.3), torch.randn(6, 5, generator=g, dtype=torch.float64)),
        (conv, conv_epsilon(conv, 0.3), torch.randn(2, 3, 4, 4, generator=g,
                                                     dtype=torch.float64)),
    ):
        x = x.requires_grad_(True)
        z = patched(x)
        rel_out = torch.randn(z.shape, generator=g, dtype=torch.float64)
        (grad,) = torch.autograd.grad(z, x, rel_out / z)
        s = rel_out / (z + 0.3 * torch.where(z >= 0, 1.0, -1.0).double())
        (expected,) = torch.autograd.grad(layer(x), x, s)  # W^T s
        torch.testing.assert_close(x * grad, x * expected)


def test_mlp_activation_carries_fc1s_epsilon_rule() -> None:
    """fc1's epsilon rule folded into the GELU's identity ratio, f(z) / (z + eps sign z), gives
    the relevance of the two rules applied one after the other, zero pre-activations included
    (there both give 0: the epsilon rule's z / (z + eps) is 0)."""
    from xai_bench.explain.lrp_rules import activation_identity, linear_epsilon

    g = torch.Generator().manual_seed(11)
    fc1, act = nn.Linear(5, 6).double(), nn.GELU()
    with torch.no_grad():  # output 2: exactly 0 for every input
        fc1.weight[2].zero_()
        fc1.bias[2] = 0.0
    x = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    grad_out = torch.randn(4, 6, generator=g, dtype=torch.float64)  # R_out / GELU output
    (grad,) = torch.autograd.grad(activation_identity(act, 0.3)(fc1(x)), x, grad_out)
    apart = activation_identity(act)(linear_epsilon(fc1, 0.3)(x))
    (expected,) = torch.autograd.grad(apart, x, grad_out)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(x * grad, x * expected, rtol=1e-12, atol=1e-14)


def test_pixel_level_sums_to_the_token_level_through_an_unbiased_patch_embedding() -> None:
    vit, x = tiny_vit(seed=9), images(2, seed=10)
    with torch.no_grad():
        vit.patch_embed.proj.bias.zero_()
    target = torch.tensor([2, 0])
    for name in ("attnlrp", "cp_lrp"):
        tokens = build_method(name, epsilon=0.0)(vit, x, target=target).raw
        pixels = build_method(name, epsilon=0.0, level="pixels")(vit, x, target=target).raw
        torch.testing.assert_close(pixels.reshape(2, 4, 8, 4, 8).sum((2, 4)), tokens)
