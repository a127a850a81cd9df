"""Attention map, rollout, Chefer generic (ICCV 2021) and Chefer LRP (CVPR 2021) on tiny ViTs.

No pip oracle exists for these methods: hand computations on depth-1/2 models, a
naive per-image reference of the LRP written with autograd, and invariants.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.attention import (
    AttentionMap,
    AttentionRollout,
    CheferGeneric,
    rollout_matrix,
)
from xai_bench.explain.base import METHODS, build_method
from xai_bench.explain.chefer import (
    CheferLRP,
    forward_with_tape,
    lrp_attention,
    relprop_add,
    relprop_linear,
    relprop_matmul,
)
from xai_bench.explain.vit_geometry import capture_attention, token_grid
from xai_bench.utils.errors import ConfigError

NAMES = ("attention", "rollout", "chefer_generic", "chefer")
TINY = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=2)


def tiny_vit(arch: str = "vit_tiny_patch16_224", depth: int = 2, seed: int = 0,
             **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(arch, **{**TINY, "depth": depth, **kwargs}).double().eval()
    with torch.no_grad():  # timm's init gives near-uniform attention; sharpen it a little
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(8.0)
        model.head.weight.normal_(0, 1.0)
        if hasattr(model, "head_dist"):
            model.head_dist.weight.normal_(0, 1.0)
    return model


def images(n: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


VARIANTS = {
    "vit": lambda: tiny_vit(),
    "distilled": lambda: tiny_vit("deit_tiny_distilled_patch16_224"),
    "registers": lambda: tiny_vit("vit_small_patch16_224", reg_tokens=4, no_embed_class=True,
                                  init_values=0.5),
}


def test_registered_names_and_flags() -> None:
    for name in NAMES:
        assert name in METHODS
    assert not METHODS["attention"].needs_grad and not METHODS["rollout"].needs_grad
    assert METHODS["chefer"].needs_grad and METHODS["chefer_generic"].needs_grad
    assert METHODS["attention"].default_upsample == "nearest"
    assert all(METHODS[n].default_upsample == "bilinear" for n in NAMES[1:])
    with pytest.raises(ConfigError):
        build_method("attention", head_reduction="median")
    with pytest.raises(ConfigError):
        build_method("rollout", discard_ratio=1.0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_single_calls_shapes_and_range(name: str, variant: str) -> None:
    model, x = VARIANTS[variant](), images(3)
    method = build_method(name)
    target = torch.tensor([0, 1, 1])
    batch = method(model, x, target)
    prefix, gh, gw = token_grid(model)
    assert batch.maps.shape == (3, 32, 32) and batch.raw.shape == (3, gh, gw) == (3, 4, 4)
    assert batch.maps.min() >= 0 and batch.maps.max() <= 1 + 1e-6
    for i in range(3):
        single = method(model, x[i : i + 1], target[i : i + 1])
        torch.testing.assert_close(single.raw[0], batch.raw[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_six_by_six_grid_model(name: str) -> None:
    model = tiny_vit(img_size=48)
    out = build_method(name)(model, images(2, 48), 1)
    assert out.raw.shape == (2, 6, 6) and out.maps.shape == (2, 48, 48)


@pytest.mark.parametrize("name", NAMES)
def test_model_left_unchanged(name: str) -> None:
    model = tiny_vit()
    model.train()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    x = images(2)
    model.eval()
    before = model(x)
    model.train()
    build_method(name)(model, x, 1)
    assert model.training and all(blk.attn.fused_attn for blk in model.blocks)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(x), before, atol=0, rtol=0)


# ----------------------------------------------------------------------------- attention map
def hand_attention(model: nn.Module, x: torch.Tensor, block: int = 0) -> torch.Tensor:
    """softmax(q k^T * scale) from the qkv weights, mean over heads: (B, N, N)."""
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for blk in model.blocks[:block]:
            tokens = blk(tokens)
        attn = model.blocks[block].attn
        h = model.blocks[block].norm1(tokens)
        b, n, c = h.shape
        qkv = (F.linear(h, attn.qkv.weight, attn.qkv.bias).view(b, n, 3, attn.num_heads, -1)
               .permute(2, 0, 3, 1, 4))
        q, k = qkv[0], qkv[1]
        return torch.softmax(q @ k.transpose(-2, -1) * attn.scale, dim=-1).mean(dim=1)


def test_attention_equals_hand_computation_depth1() -> None:
    model, x = tiny_vit(depth=1), images(2)
    out = AttentionMap()(model, x, 0)
    expected = hand_attention(model, x)[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(out.raw, expected, atol=1e-10, rtol=1e-10)
    model2 = tiny_vit(depth=2)
    out2 = AttentionMap(layer=0)(model2, x, 0)
    torch.testing.assert_close(out2.raw, hand_attention(model2, x)[:, 0, 1:].reshape(2, 4, 4))


def test_attention_head_reductions_and_prefix_tokens() -> None:
    model, x = VARIANTS["registers"](), images(2)
    with torch.no_grad(), capture_attention(model) as attns:
        model(x)
    prefix, gh, gw = token_grid(model)
    assert prefix == 5
    for how, fn in (("mean", torch.mean), ("max", torch.amax), ("min", torch.amin)):
        raw = AttentionMap(head_reduction=how)(model, x, 0).raw
        torch.testing.assert_close(raw, fn(attns[-1], dim=1)[:, 0, prefix:].reshape(2, gh, gw))


def test_attention_nearest_blocks_class_agnostic_and_fused_flag() -> None:
    model, x = tiny_vit(), images(2)
    out0 = AttentionMap()(model, x, 0)
    out1 = AttentionMap()(model, x, 1)
    torch.testing.assert_close(out0.maps, out1.maps, atol=0, rtol=0)
    blocks = out0.maps.reshape(2, 4, 8, 4, 8)  # each token -> an 8x8 pixel block
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    raws = []
    for fused in (True, False):
        for blk in model.blocks:
            blk.attn.fused_attn = fused
        raws.append(AttentionMap()(model.float(), x.float(), 0).raw)
        assert all(blk.attn.fused_attn is fused for blk in model.blocks)
    torch.testing.assert_close(raws[0], raws[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- rollout
def test_rollout_rows_sum_to_one() -> None:
    model, x = tiny_vit(depth=3), images(2)
    for kwargs in ({}, {"discard_ratio": 0.5}, {"head_reduction": "max"}, {"start_layer": 1}):
        rolled = AttentionRollout(**kwargs).rollout(model, x)
        torch.testing.assert_close(rolled.sum(-1), torch.ones(2, 17, dtype=torch.float64))


def test_rollout_uniform_attention_gives_uniform_map() -> None:
    model = tiny_vit(depth=3)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.qkv.weight[: 2 * 32].zero_()  # q = k = 0 -> uniform softmax
            if blk.attn.qkv.bias is not None:
                blk.attn.qkv.bias[: 2 * 32].zero_()
    raw = AttentionRollout()(model, images(2), 0).raw
    torch.testing.assert_close(raw, raw[:, :1, :1].expand_as(raw))


def test_rollout_last_start_layer_is_normalised_a_plus_i() -> None:
    model, x = tiny_vit(depth=3), images(2)
    a = hand_attention(model, x, block=2)
    a = a + torch.eye(17, dtype=a.dtype)
    a = a / a.sum(-1, keepdim=True)
    raw = AttentionRollout(start_layer=-1)(model, x, 0).raw
    torch.testing.assert_close(raw, a[:, 0, 1:].reshape(2, 4, 4))
    torch.testing.assert_close(AttentionRollout(start_layer=2)(model, x, 0).raw, raw)
    with pytest.raises(ConfigError):
        AttentionRollout(start_layer=3)(model, x, 0)


def _rownorm_plus_i(a: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema's per-layer matrix: 0.5 A + 0.5 I for a row-stochastic A, i.e. rows of
    (A + I) normalised."""
    a = a + torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


def test_rollout_order_two_layers_by_hand() -> None:
    """Rollout at layer L is A~_L = A_L A~_(L-1) (Abnar & Zuidema 2020, eq. for i > j): the later
    layer multiplies from the LEFT. Two hand-computed layers whose products differ by order:

      A_0 = [[0, 1], [1, 0]] -> rownorm(A_0 + I) = [[.5, .5], [.5, .5]] = U
      A_1 = [[1, 0], [1, 0]] -> rownorm(A_1 + I) = [[1, 0], [.5, .5]] = P
      P @ U = [[.5, .5], [.5, .5]]    (the definition)
      U @ P = [[.75, .25], [.75, .25]] (the reversed product `rolled @ a`)
    """
    a0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    a1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    as_probs = [a.view(1, 1, 2, 2) for a in (a0, a1)]  # (B=1, heads=1, N, N)
    rolled = rollout_matrix(as_probs)
    half = torch.full((2, 2), 0.5, dtype=torch.float64)
    torch.testing.assert_close(rolled[0], half, atol=0, rtol=0)
    reversed_product = torch.tensor([[0.75, 0.25], [0.75, 0.25]], dtype=torch.float64)
    assert (rolled[0] - reversed_product).abs().max() >= 0.25
    # start_layer=1 keeps only P
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(rollout_matrix(as_probs, start_layer=1)[0], p, atol=0, rtol=0)


def test_rollout_order_three_layers_two_heads_by_definition() -> None:
    """Three non-commuting layers with two heads each (head mean, + I, row-normalised):
    R = A~_2 A~_1 A~_0 written out, never A~_0 A~_1 A~_2; a start layer drops the first factors."""
    g = torch.Generator().manual_seed(3)
    logits = [4 * torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    attns = [torch.softmax(z, -1) for z in logits]
    m0, m1, m2 = (_rownorm_plus_i(a.mean(dim=1)) for a in attns)
    expected = m2 @ m1 @ m0
    reversed_product = m0 @ m1 @ m2
    assert (expected - reversed_product).abs().max() > 0.05  # the order matters for these matrices
    rolled = rollout_matrix(attns)
    torch.testing.assert_close(rolled, expected, atol=1e-14, rtol=0)
    assert not torch.allclose(rolled, reversed_product, atol=1e-3)
    torch.testing.assert_close(rollout_matrix(attns, start_layer=1), m2 @ m1, atol=1e-14, rtol=0)
    torch.testing.assert_close(rollout_matrix(attns, start_layer=-1), m2, atol=1e-14, rtol=0)


def test_rollout_order_on_a_depth3_vit_from_the_qkv_weights() -> None:
    """The model path: attention recomputed from the qkv weights (hand_attention), rolled out by
    the definition, equals the method's raw map; the reversed product does not."""
    model, x = tiny_vit(depth=3), images(2)
    m0, m1, m2 = (_rownorm_plus_i(hand_attention(model, x, block=b)) for b in range(3))
    expected = (m2 @ m1 @ m0)[:, 0, 1:].reshape(2, 4, 4)
    reversed_map = (m0 @ m1 @ m2)[:, 0, 1:].reshape(2, 4, 4)
    raw = AttentionRollout()(model, x, 0).raw
    torch.testing.assert_close(raw, expected, atol=1e-12, rtol=0)
    assert (raw - reversed_map).abs().max() > 1e-3
    torch.testing.assert_close(AttentionRollout(start_layer=1)(model, x, 0).raw,
                               (m2 @ m1)[:, 0, 1:].reshape(2, 4, 4), atol=1e-12, rtol=0)


def test_rollout_discard_keeps_cls_column() -> None:
    attn = torch.rand(1, 2, 5, 5).softmax(-1)
    rolled = rollout_matrix([attn], discard_ratio=0.99, residual=False)  # keeps 1 per row: CLS
    torch.testing.assert_close(rolled[0, :, 0], torch.ones(5))


# ----------------------------------------------------------------------------- chefer generic
def test_generic_zero_gradients_give_identity() -> None:
    model, x = tiny_vit(), images(2)
    with torch.no_grad():
        model.head.weight.zero_()
    rel = CheferGeneric().relevance(model, x, torch.tensor([0, 1]))
    torch.testing.assert_close(rel, torch.eye(17, dtype=rel.dtype).expand(2, 17, 17))
    assert torch.equal(CheferGeneric()(model, x, 1).raw, torch.zeros(2, 4, 4, dtype=torch.float64))


def test_generic_one_block_hand_check() -> None:
    model, x = tiny_vit(depth=1), images(2)
    target = torch.tensor([1, 0])
    with capture_attention(model, retain_grad=True) as attns:
        model(x.requires_grad_(True)).gather(1, target.view(-1, 1)).sum().backward()
    a = attns[0]
    expected = torch.relu(a.grad * a).mean(1)[:, 0, 1:].reshape(2, 4, 4)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(CheferGeneric()(model, x.detach(), target).raw, expected)


# ----------------------------------------------------------------------------- chefer LRP
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tape_forward_reproduces_logits(variant: str) -> None:
    model, x = VARIANTS[variant](), images(2)
    with torch.no_grad():
        logits, _, tapes = forward_with_tape(model, x)
        torch.testing.assert_close(logits, model(x), atol=1e-12, rtol=1e-12)
    assert len(tapes) == len(model.blocks)


def test_rule_conservation() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(3, 5, generator=g, dtype=torch.float64),
            torch.randn(4, 5, generator=g, dtype=torch.float64))
    rel = torch.rand(3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(relprop_linear(x, w, rel).sum(1), rel.sum(1))
    assert (relprop_linear(x.abs(), w.abs(), rel) >= 0).all()
    a, b = (torch.randn(3, 6, 4, generator=g, dtype=torch.float64),
            torch.randn(3, 6, 4, generator=g, dtype=torch.float64))
    rel3 = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    ra, rb = relprop_add(a, b, rel3)
    torch.testing.assert_close((ra + rb).sum((1, 2)), rel3.sum((1, 2)))
    m1, m2 = (torch.rand(3, 6, 6, generator=g, dtype=torch.float64),
              torch.rand(3, 6, 4, generator=g, dtype=torch.float64))
    r1, r2 = relprop_matmul(m1, m2, rel3)
    torch.testing.assert_close(r1.sum((1, 2)), 0.5 * rel3.sum((1, 2)))
    torch.testing.assert_close(r2.sum((1, 2)), 0.5 * rel3.sum((1, 2)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lrp_conserves_relevance_down_to_the_tokens(variant: str) -> None:
    """R_out = one_hot sums to 1; every rule conserves, up to the eps of the stabilised
    divisions (|z| ~ 1e-9 terms), so the block-0 input carries ~1 (tolerance 1e-3)."""
    model, x = VARIANTS[variant](), images(3)
    _, _, _, rel_in = lrp_attention(model, x, torch.tensor([0, 1, 1]))
    torch.testing.assert_close(rel_in.sum((1, 2)), torch.ones(3, dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_lrp_head_relevance_reaches_prefix_tokens_only() -> None:
    from xai_bench.explain.chefer import relprop_head

    for variant, nonzero in (("distilled", {0, 1}), ("registers", {0}), ("vit", {0})):
        model, x = VARIANTS[variant](), images(2)
        with torch.no_grad():
            _, tokens, _ = forward_with_tape(model, x)
            rel = relprop_head(model, tokens, F.one_hot(torch.tensor([1, 0]), 2).double())
        per_token = rel.abs().sum((0, 2))
        assert {i for i in range(per_token.numel()) if per_token[i] > 0} == nonzero


def test_chefer_depends_on_target_and_start_layer() -> None:
    model, x = tiny_vit(depth=3), images(2)
    r0, r1 = CheferLRP()(model, x, 0).raw, CheferLRP()(model, x, 1).raw
    assert not torch.allclose(r0, r1)
    assert not torch.allclose(CheferLRP(start_layer=2)(model, x, 0).raw, r0)


def test_unsupported_variants_fail_clearly() -> None:
    model = tiny_vit(global_pool="avg")
    with pytest.raises(ConfigError, match="global_pool"):
        CheferLRP()(model, images(1), 0)
    model = tiny_vit()
    model.blocks[0].mlp = nn.Sequential(model.blocks[0].mlp)
    with pytest.raises(ConfigError, match="block 0"):
        CheferLRP()(model, images(1), 0)
    with pytest.raises(ConfigError, match="CLS"):
        AttentionMap()(tiny_vit(class_token=False, global_pool="avg"), images(1), 0)


# A naive single-image LRP reference, written the way the paper's code does it: every rule
# through autograd (C = x * d<z, S>/dx with S = R / z), a loop over the images.
def _sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / (b + 1e-9 sign(b)), 0 where b == 0 (the paper's code adds +1e-9 whatever the sign;
    that moves maps by ~1e-6 relative, so the reference uses the usual sign-aware stabiliser)."""
    den = b + 1e-9 * (b >= 0).to(b.dtype) - 1e-9 * (b < 0).to(b.dtype)
    return a / den * b.ne(0).to(b.dtype)


def _ref_linear(x: torch.Tensor, w: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    px, nx = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z = F.linear(px, w.clamp(min=0)) + F.linear(nx, w.clamp(max=0))
    gp, gn = torch.autograd.grad(z, [px, nx], _sdiv(rel, z))
    return (px * gp + nx * gn).detach()


def _ref_bilinear(fn, xs: list[torch.Tensor], rel: torch.Tensor) -> list[torch.Tensor]:
    xs = [t.detach().requires_grad_(True) for t in xs]
    z = fn(*xs)
    grads = torch.autograd.grad(z, xs, _sdiv(rel, z))
    return [(t * g).detach() for t, g in zip(xs, grads, strict=True)]


def _ref_add(a: torch.Tensor, b: torch.Tensor,
             rel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ra, rb = _ref_bilinear(lambda u, v: u + v, [a, b], rel)
    sa, sb = ra.sum(), rb.sum()
    fa = _sdiv(sa.abs(), sa.abs() + sb.abs()) * rel.sum()
    fb = _sdiv(sb.abs(), sa.abs() + sb.abs()) * rel.sum()
    return ra * _sdiv(fa, sa), rb * _sdiv(fb, sb)


def reference_chefer(model: nn.Module, image: torch.Tensor, target: int) -> torch.Tensor:
    x = model._pos_embed(model.patch_embed(image[None]))
    saved = []
    for blk in model.blocks:
        at = blk.attn
        h1 = blk.norm1(x)
        qkv = at.qkv(h1).view(1, x.shape[1], 3, at.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * at.scale, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(1, x.shape[1], -1)
        y = at.proj(o)
        xm = x + y
        h2 = blk.norm2(xm)
        m = blk.mlp.act(blk.mlp.fc1(h2))
        y2 = blk.mlp.fc2(m)
        saved.append(dict(x=x, h1=h1, q=q, k=k, v=v, a=a, o=o, y=y, xm=xm, h2=h2, m=m, y2=y2))
        x = xm + y2
    tokens = model.norm(x)
    logit = model.head(tokens[:, 0])[0, target]
    grads = torch.autograd.grad(logit, [s["a"] for s in saved])
    rel = torch.zeros_like(tokens).detach()
    rel[:, 0] = _ref_linear(tokens[:, 0].detach(), model.head.weight.detach(),
                            F.one_hot(torch.tensor([target]), 2).double())
    cams = [None] * len(saved)
    for i in reversed(range(len(saved))):
        s = {key: val.detach() for key, val in saved[i].items()}
        blk = model.blocks[i]
        r_skip, r_y2 = _ref_add(s["xm"], s["y2"], rel)
        r_h2 = _ref_linear(s["h2"], blk.mlp.fc1.weight.detach(),
                           _ref_linear(s["m"], blk.mlp.fc2.weight.detach(), r_y2))
        r_x, r_y = _ref_add(s["x"], s["y"], r_skip + r_h2)
        r_o = _ref_linear(s["o"], blk.attn.proj.weight.detach(), r_y)
        r_o = r_o.view(1, -1, blk.attn.num_heads, s["v"].shape[-1]).transpose(1, 2)
        r_a, r_v = (r / 2 for r in _ref_bilinear(torch.matmul, [s["a"], s["v"]], r_o))
        r_q, r_k = (r / 2 for r in _ref_bilinear(lambda u, w: u @ w.transpose(-2, -1),
                                                 [s["q"], s["k"]], r_a))
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(1, s["x"].shape[1], -1)
        rel = r_x + _ref_linear(s["h1"], blk.attn.qkv.weight.detach(), r_qkv)
        cams[i] = (grads[i] * r_a).clamp(min=0).mean(1)[0]
    n = tokens.shape[1]
    joint = torch.eye(n, dtype=tokens.dtype)
    for cam in cams:
        joint = (cam + torch.eye(n, dtype=tokens.dtype)) @ joint
    return joint[0, 1:].reshape(4, 4)


def test_chefer_matches_naive_reference() -> None:
    model, x = tiny_vit(depth=2), images(2)
    target = torch.tensor([1, 0])
    raw = CheferLRP()(model, x, target).raw
    for i in range(2):
        torch.testing.assert_close(raw[i], reference_chefer(model, x[i], int(target[i])),
                                   atol=1e-10, rtol=1e-8)
