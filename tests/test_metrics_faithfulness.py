"""Faithfulness metrics against quantus 0.6.0 / captum 0.9.0 and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai_bench.metrics.functional import faithfulness as FF
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.seeded_noise import seeded_uniform

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _tiny_cnn(seed: int = 0, size: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * size * size, classes),
    ).eval()


class Recorder(nn.Module):
    """Records every input it sees and returns constant logits (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 2)


class Linear2(nn.Module):
    """logits (w . x + c, 0): p(class 0) = sigmoid(w . x + c), known in closed form for any
    input."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.weight, self.bias = weight.reshape(-1), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.weight + self.bias
        return torch.stack([z, torch.zeros_like(z)], dim=1)


# ----------------------------------------------------------------------------------------------
# quantus RegionPerturbation as the oracle


def _quantus_region_perturbation(model, x, maps, y, patch_size, order, steps) -> np.ndarray:
    import quantus

    metric = quantus.RegionPerturbation(
        patch_size=patch_size,
        order=order,
        regions_evaluation=steps,
        normalise=False,
        abs=False,
        perturb_baseline="black",
        disable_warnings=True,
    )
    out = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(),
                 device="cpu")
    return np.asarray(out)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("steps", [6, None])
def test_region_perturbation_matches_quantus(order: str, steps: int | None) -> None:
    """quantus RegionPerturbation(perturb_baseline="black", normalise=False) is our fill="min".

    Its semantics, read from quantus 0.6.0's source: candidate patches are the non-overlapping
    patch_size blocks (skimage view_as_blocks) in row-major order, ranked by the SUM of the
    attribution over the block and all channels (a (B,1,H,W) map is broadcast to C channels;
    np.argsort, no tie rule); patches are replaced cumulatively; "black" is the minimum of the
    current perturbed array over all channels and pixels, which never changes because the fill is
    that minimum. It returns (B, L) values p_0 - p_k for k = 1..L (no k = 0 column), so
    AOPC = sum / (L + 1).
    """
    torch.manual_seed(1)
    model = _tiny_cnn()
    x, maps, y = torch.randn(4, 3, 16, 16), torch.rand(4, 16, 16), torch.tensor([0, 1, 2, 1])
    n_regions = 16
    q = _quantus_region_perturbation(model, x, maps, y, 4, order, steps if steps else n_regions)
    curve = FF.region_perturbation(model, x, maps, y, region=4, order=order, steps=steps,
                                   fill="min")
    assert curve.shape == (4, (steps or n_regions) + 1)
    np.testing.assert_allclose((curve[:, :1] - curve[:, 1:]).numpy(), q, atol=1e-6)
    np.testing.assert_allclose(FF.aopc(curve).numpy(), q.sum(1) / curve.shape[1], atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_partial_tiles_matches_quantus_where_rankings_coincide(
        order: str) -> None:
    """Partial tiles: quantus pads H and W to a multiple of patch_size, floor(p/2) before and
    ceil(p/2) after, and ranks by the sum over the zero-padded block. Irreducible differences:
    with more than one pixel of padding its grid is shifted (centred) while ours starts at (0, 0),
    and a partial tile's sum is not its mean (we rank by the mean, as the faithfulness study did).
    With 15 px and
    patch 4 the padding is (0, 1) so the grids coincide; per-tile constant maps whose partial
    tiles rank lowest both by sum and by mean then give the same computation.
    """
    torch.manual_seed(2)
    model = _tiny_cnn(size=15)
    x, y = torch.randn(3, 3, 15, 15), torch.tensor([0, 1, 2])
    values = 0.5 + 0.5 * torch.rand(3, 4, 4)  # interior tiles in (0.5, 1)
    values[:, 3, :] = 0.1 + 0.1 * torch.rand(3, 4)  # partial (12 px) tiles in (0.1, 0.2)
    values[:, :, 3] = 0.1 + 0.1 * torch.rand(3, 4)
    values[:, 3, 3] = 0.05  # the 9 px corner: lowest by sum and by mean
    maps = values.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :15, :15].contiguous()
    q = _quantus_region_perturbation(model, x, maps, y, 4, order, 16)
    curve = FF.region_perturbation(model, x, maps, y, region=4, order=order, fill="min")
    np.testing.assert_allclose((curve[:, :1] - curve[:, 1:]).numpy(), q, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# captum sensitivity_max as the oracle


def _saliency(model: nn.Module):
    """|d logit_0 / dx| max over channels, min-max normalised per image."""

    def explain(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
        m = grad.abs().amax(1)
        low = m.flatten(1).amin(1).view(-1, 1, 1)
        high = m.flatten(1).amax(1).view(-1, 1, 1)
        return (m - low) / (high - low + 1e-12)

    return explain


def _setup_sensitivity():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(),
                          nn.Linear(4 * 12 * 12, 2)).eval()
    x = torch.randn(3, 3, 12, 12)
    explain = _saliency(model)
    return model, x, explain, explain(x)


def test_max_sensitivity_normalised_matches_captum() -> None:
    """captum's sensitivity_max repeat_interleaves the inputs n_perturb_samples times (image-major:
    row b * n + j is draw j of image b), calls perturb_func once per chunk (one chunk when
    max_examples_per_batch is None), recomputes explanation_func(inputs) itself for the
    reference, and divides each Frobenius distance by || explanation(x) ||_F (1 when 0), max over
    draws. Injecting x + d_j from seeded_uniform makes it the same computation."""
    from captum.metrics import sensitivity_max

    _, x, explain, maps = _setup_sensitivity()
    ids, radius, samples = torch.tensor([7, 3, 11]), 0.2, 5
    noise = torch.stack(
        [seeded_uniform(ids, tuple(x.shape[1:]), seed=4, stream=j, low=-radius, high=radius)
         for j in range(samples)],
        dim=1,
    ).reshape(-1, *x.shape[1:])

    def perturb(inputs: torch.Tensor, perturb_radius: float) -> torch.Tensor:
        assert torch.equal(inputs, x.repeat_interleave(samples, 0)) and perturb_radius == radius
        return inputs + noise

    def captum_explain(inputs):
        inp = inputs[0] if isinstance(inputs, tuple) else inputs
        return (explain(inp),)

    expected = sensitivity_max(captum_explain, x, perturb_func=perturb, perturb_radius=radius,
                               n_perturb_samples=samples)
    ours = FF.max_sensitivity(explain, x, maps, radius, samples, seed=4, ids=ids, normalise=True)
    torch.testing.assert_close(ours, expected.view(-1), atol=1e-5, rtol=1e-5)


def test_max_sensitivity_unnormalised_by_hand_and_draws_per_call() -> None:
    _, x, explain, maps = _setup_sensitivity()
    ids, radius, samples = torch.tensor([0, 5, 2]), 0.1, 5
    by_hand = torch.stack(
        [
            torch.linalg.vector_norm(
                explain(x + seeded_uniform(ids, tuple(x.shape[1:]), seed=0, stream=j,
                                           low=-radius, high=radius)) - maps,
                dim=(1, 2),
            )
            for j in range(samples)
        ]
    ).amax(0)
    ours = FF.max_sensitivity(explain, x, maps, radius, samples, ids=ids)
    torch.testing.assert_close(ours, by_hand, atol=1e-6, rtol=1e-6)
    assert (ours > 0).all()
    for per_call in (2, 3, 7):
        torch.testing.assert_close(
            FF.max_sensitivity(explain, x, maps, radius, samples, ids=ids, draws_per_call=per_call),
            ours, atol=1e-6, rtol=1e-6
        )
    # radius 0: the explanation of the unperturbed input is the map itself
    assert FF.max_sensitivity(explain, x, maps, 0.0, 2, ids=ids).abs().max() < 1e-6
    # normalise divides by the map's norm
    norm = torch.linalg.vector_norm(maps, dim=(1, 2))
    torch.testing.assert_close(FF.max_sensitivity(explain, x, maps, radius, samples, ids=ids,
                                                  normalise=True), ours / norm)


# ----------------------------------------------------------------------------------------------
# hand-computed region perturbation / AOPC


@pytest.mark.parametrize("fill", ["zero", "min"])
def test_aopc_on_linear_model_closed_form(fill: str) -> None:
    torch.manual_seed(5)
    weight = torch.randn(1, 4, 4)
    model = Linear2(weight)
    x, maps = torch.randn(2, 1, 4, 4), torch.rand(2, 4, 4)
    target = torch.zeros(2, dtype=torch.long)
    curve = FF.region_perturbation(model, x, maps, target, region=2, order="morf", fill=fill)
    for b in range(2):
        tile_means = [maps[b, 2 * (t // 2) : 2 * (t // 2) + 2,
                           2 * (t % 2) : 2 * (t % 2) + 2].mean().item() for t in range(4)]
        order = sorted(range(4), key=lambda t: -tile_means[t])
        value = 0.0 if fill == "zero" else x[b].min().item()
        xk, probs = x[b, 0].clone(), [torch.sigmoid((weight[0] * x[b, 0]).sum()).item()]
        for t in order:
            xk[2 * (t // 2) : 2 * (t // 2) + 2, 2 * (t % 2) : 2 * (t % 2) + 2] = value
            probs.append(torch.sigmoid((weight[0] * xk).sum()).item())
        np.testing.assert_allclose(curve[b].numpy(), probs, atol=1e-6)
        expected_aopc = sum(probs[0] - p for p in probs) / len(probs)
        assert FF.aopc(curve)[b].item() == pytest.approx(expected_aopc, abs=1e-6)


def test_region_order_partial_edge_tiles_ranked_by_real_mean() -> None:
    maps = torch.zeros(1, 22, 22)
    maps[0, :7, :7] = 5.0  # tile 0: sum 245, mean 5
    maps[0, :7, 21] = 10.0  # tile 3: the 1 px wide edge tile, sum 70, mean 10
    maps[0, 21, 21] = 7.0  # tile 15: the 1 px corner, mean 7
    labels, order = FF.region_order(maps, 7, "morf")
    assert labels.shape == (22, 22) and order.shape == (1, 16)
    assert (labels[0, 20].item() == 2 and labels[0, 21].item() == 3
            and labels[21, 0].item() == 12 and labels[21, 21].item() == 15)
    assert torch.bincount(labels.view(-1)).tolist() == [49, 49, 49, 7] * 3 + [7, 7, 7, 1]
    assert order[0, :3].tolist() == [3, 15, 0]
    assert order[0, 3:].tolist() == sorted(order[0, 3:].tolist())  # ties: by tile id
    _, lerf = FF.region_order(maps, 7, "lerf")
    assert lerf[0, -3:].tolist() == [0, 15, 3] and lerf[0, 0].item() == 1
    # 224 px with r = 21: 11 x 11 tiles, the last 14 px
    labels, order = FF.region_order(torch.rand(2, 224, 224), 21)
    assert order.shape == (2, 121) and (labels[0] == labels[0, -1]).sum().item() == 224 - 210


def test_morf_removes_highest_tile_first_cumulatively() -> None:
    torch.manual_seed(6)
    model = Recorder()
    x, maps = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    FF.region_perturbation(model, x, maps, torch.zeros(2, dtype=torch.long), region=4, fill="zero")
    assert len(model.seen) == 5 and torch.equal(model.seen[0], x)
    labels, order = FF.region_order(maps, 4, "morf")
    for b in range(2):
        tile_means = torch.stack([maps[b][labels == t].mean() for t in range(4)])
        assert order[b].tolist() == tile_means.argsort(descending=True).tolist()
        for k in range(1, 5):
            removed = torch.isin(labels, order[b, :k])
            seen = model.seen[k][b]
            assert ((seen[:, removed] == 0).all()
                    and torch.equal(seen[:, ~removed], x[b][:, ~removed]))


def test_noise_fill_range_fresh_per_step_and_once() -> None:
    torch.manual_seed(7)
    x, maps = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    target = torch.zeros(3, dtype=torch.long)
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    labels, order = FF.region_order(maps, 4, "morf")
    first = torch.stack([labels == order[b, 0] for b in range(3)])[:, None].expand_as(x)
    seen = {}
    for fill in ("noise", "noise_once"):
        model = Recorder()
        FF.region_perturbation(model, x, maps, target, region=4, fill=fill)
        for xk in model.seen[1:]:
            assert (xk >= low).all() and (xk <= high).all()
        seen[fill] = model.seen
    fresh, once = seen["noise"], seen["noise_once"]
    # step k's fill is seeded_uniform stream k (noise_once: stream 0) scaled to [min, max]
    for k, xk in ((2, fresh[2]), (0, once[3])):
        u = seeded_uniform(torch.arange(3), (3, 8, 8), seed=0, stream=k)
        torch.testing.assert_close(xk[first], (low + (high - low) * u)[first])
    assert not torch.equal(fresh[1][first], fresh[2][first])  # redrawn at step 2
    assert (torch.equal(once[1][first], once[2][first])
            and torch.equal(once[1][first], once[4][first]))
    assert not torch.equal(fresh[1][first], x[first])
    # the noise is U[min, max]: its mean over all removed pixels is near the middle
    all_noise = fresh[4]
    mid = ((low + high) / 2).expand_as(x)
    assert (all_noise - mid).abs().mean() < 0.5 * (high - low).mean()
    # per-channel mean fill
    model = Recorder()
    FF.region_perturbation(model, x, maps, target, region=4, fill="mean")
    torch.testing.assert_close(model.seen[4], x.mean(dim=(2, 3), keepdim=True).expand_as(x))


# ----------------------------------------------------------------------------------------------
# AOPC with the study's noise fill against a plain loop written from the definition

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014), the mixer behind the per-image noise seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _noise_draw(seed: int, image_id: int, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """U[0, 1) float32 for one (seed, image id, stream): a CPU generator seeded with the 63-bit
    mix of the three, one draw of the whole (C, H, W) image."""
    key = _splitmix64(_splitmix64(_splitmix64(seed) ^ image_id) ^ stream) >> 1
    return torch.rand(shape, generator=torch.Generator().manual_seed(key))


def _aopc_by_definition(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    target: torch.Tensor,
    ids: torch.Tensor,
    region: int,
    fill: str,
    seed: int,
) -> tuple[list[list[float]], list[float]]:
    """One image at a time, one step at a time (Samek et al. 2016):
    tiles of region x region px (partial at the right / bottom edge), each scored by the mean of
    the map over its real pixels; ranked descending (ties: lower tile index first); the first k
    removed cumulatively, every removed pixel of every channel replaced by uniform noise in
    [min(x), max(x)] of that image, a fresh noise image at step k ("noise") or one drawn once
    ("noise_once"); p_k the softmax probability of the target; AOPC = mean_k (p_0 - p_k)."""
    _, channels, height, width = x.shape
    curves, scores = [], []
    for b in range(x.shape[0]):
        tiles = []
        for top in range(0, height, region):
            for left in range(0, width, region):
                tile = maps[b, top : top + region, left : left + region]
                tiles.append((top, left, tile.double().mean().item()))
        ranked = sorted(range(len(tiles)), key=lambda t: (-tiles[t][2], t))
        low, high = x[b].min().item(), x[b].max().item()
        removed = torch.zeros(height, width, dtype=torch.bool)
        probs = []
        for k in range(len(ranked) + 1):
            if k > 0:
                top, left, _ = tiles[ranked[k - 1]]
                removed[top:top + region, left:left + region] = True
            stream = k if fill == "noise" else 0
            u = _noise_draw(seed, int(ids[b]), stream, (channels, height, width))
            noise = low + (high - low) * u
            xk = torch.where(removed, noise.clamp(max=high), x[b])
            with torch.no_grad():
                probs.append(torch.softmax(model(xk[None]), dim=-1)[0, target[b]].item())
        curves.append(probs)
        scores.append(sum(probs[0] - p for p in probs) / len(probs))
    return curves, scores


def test_noise_draw_is_the_seeded_noise_source() -> None:
    ids = torch.tensor([0, 17, 123456])
    for stream in (0, 3):
        expected = torch.stack([_noise_draw(5, int(i), stream, (2, 3, 4)) for i in ids])
        assert torch.equal(seeded_uniform(ids, (2, 3, 4), seed=5, stream=stream), expected)


@pytest.mark.parametrize("fill", ["noise", "noise_once"])
# region 4 on 12 px: 3 x 3 whole tiles; region 3 on 10 px: 4 x 4 tiles, partial at the edges
@pytest.mark.parametrize("region", [4, 3])
def test_aopc_noise_fill_matches_a_plain_loop(fill: str, region: int) -> None:
    size = 12 if region == 4 else 10
    torch.manual_seed(14)
    model = _tiny_cnn(size=size)
    x = torch.randn(3, 3, size, size) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    maps = torch.rand(3, size, size)
    target = torch.tensor([2, 0, 1])
    ids = torch.tensor([41, 7, 300])
    curve = FF.region_perturbation(
        model, x, maps, target, region=region, order="morf", fill=fill, seed=11, ids=ids
    )
    ref_curves, ref_aopc = _aopc_by_definition(model, x, maps, target, ids, region, fill, seed=11)
    np.testing.assert_allclose(curve.numpy(), np.array(ref_curves), atol=2e-6, rtol=0)
    np.testing.assert_allclose(FF.aopc(curve).numpy(), ref_aopc, atol=2e-6, rtol=0)
    assert max(ref_aopc) - min(ref_aopc) > 1e-3  # the curves are not flat: the check has teeth


def test_aopc_metric_study_settings_match_the_plain_loop() -> None:
    """The metric as the study's config builds it (fill noise, MoRF, several region sizes,
    explaining the predicted class, only correctly classified images scored)."""
    from xai_bench.metrics import build_metric
    from xai_bench.metrics.base import EvalBatch

    torch.manual_seed(15)
    model = _tiny_cnn(size=12)
    x, maps = torch.randn(4, 3, 12, 12), torch.rand(4, 12, 12)
    ids = torch.tensor([9, 2, 40, 5])
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    labels = predicted.clone()
    labels[1] = (labels[1] + 1) % 3  # image id 2 is misclassified: no score
    metric = build_metric("aopc", region=[4, 6], seed=3)
    batch = EvalBatch(images=x, labels=labels, ids=ids, maps=maps, target=predicted,
                      logits=logits, model=model, method=None)
    metric.update(batch)
    out = metric.compute()
    order = out["id"].argsort()
    assert out["id"][order].tolist() == [2, 5, 9, 40]
    for region in (4, 6):
        _, ref = _aopc_by_definition(model, x, maps, predicted, ids, region, "noise", seed=3)
        got = out[f"aopc@{region}"]
        by_id = dict(zip(out["id"].tolist(), got.tolist(), strict=True))
        assert math.isnan(by_id[2])
        for b in (0, 2, 3):
            assert by_id[int(ids[b])] == pytest.approx(ref[b], abs=2e-6)


@pytest.mark.parametrize("order", ["random", "morf"])
def test_batch_split_and_reorder_gives_same_curves(order: str) -> None:
    torch.manual_seed(8)
    model = _tiny_cnn(size=8)
    x, maps, y = torch.randn(6, 3, 8, 8), torch.rand(6, 8, 8), torch.randint(0, 3, (6,))
    ids = torch.arange(100, 106)
    full = FF.region_perturbation(model, x, maps, y, region=2, order=order, fill="noise", seed=3,
                                  ids=ids)
    perm = torch.tensor([4, 1, 5])
    rest = torch.tensor([3, 0, 2])
    for part in (perm, rest):
        sub = FF.region_perturbation(model, x[part], maps[part], y[part], region=2, order=order,
                                     fill="noise", seed=3, ids=ids[part])
        torch.testing.assert_close(sub, full[part], atol=1e-6, rtol=1e-6)
    # forward chunking does not change anything either
    chunked = FF.region_perturbation(model, x, maps, y, region=2, order=order, fill="noise", seed=3,
                                     ids=ids, batch_size=4)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    if order == "random":
        _, o1 = FF.region_order(maps, 2, "random", seed=3, ids=ids)
        _, o2 = FF.region_order(maps, 2, "random", seed=4, ids=ids)
        assert not torch.equal(o1, o2) and torch.equal(o1.sort(1).values,
                                                       torch.arange(16).expand(6, -1))


def test_steps_caps_the_curve() -> None:
    model = _tiny_cnn(size=8)
    x, maps, y = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8), torch.tensor([0, 1])
    full = FF.region_perturbation(model, x, maps, y, region=4, fill="zero")
    assert full.shape == (2, 5)
    torch.testing.assert_close(
        FF.region_perturbation(model, x, maps, y, region=4, fill="zero", steps=2), full[:, :3])
    assert FF.region_perturbation(model, x, maps, y, region=4, fill="zero",
                                  steps=50).shape == (2, 5)


# ----------------------------------------------------------------------------------------------
# deletion / insertion


def test_deletion_closed_form_rounding_and_fraction_axis() -> None:
    torch.manual_seed(9)
    weight = torch.randn(1, 4, 4)
    model = Linear2(weight)
    x, maps = torch.randn(2, 1, 4, 4), torch.rand(2, 4, 4)
    target = torch.zeros(2, dtype=torch.long)
    deletion, insertion = FF.deletion_insertion(model, x, maps, target, steps=3, fill="zero",
                                                insertion_start="zero")
    counts = [0, 5, 11, 16]  # round(16 k / 3)
    frac = np.array(counts) / 16
    for b in range(2):
        ranked = maps[b].flatten().argsort(descending=True).tolist()
        p_del, p_ins = [], []
        for n in counts:
            keep = torch.ones(16)
            keep[ranked[:n]] = 0
            p_del.append(torch.sigmoid((weight.flatten() * x[b].flatten() * keep).sum()).item())
            p_ins.append(
                torch.sigmoid((weight.flatten() * x[b].flatten() * (1 - keep)).sum()).item())
        assert deletion[b].item() == pytest.approx(np.trapezoid(p_del, frac), abs=1e-6)
        assert insertion[b].item() == pytest.approx(np.trapezoid(p_ins, frac), abs=1e-6)


def test_deletion_insertion_prefers_the_decisive_pixels() -> None:
    torch.manual_seed(10)
    weight = torch.zeros(1, 8, 8)
    weight[0, 2:4, 5:7] = 3.0  # the class-0 evidence lives in 4 bright pixels
    model = Linear2(weight, bias=-6.0)
    x = 0.1 * torch.rand(4, 1, 8, 8)
    x[:, 0, 2:4, 5:7] = 2.0  # p(class 0) ~ 1 with the evidence, ~0 without it (or blurred)
    good = weight[0].expand(4, 8, 8) + 0.01 * torch.rand(4, 8, 8)
    target = torch.zeros(4, dtype=torch.long)
    for start in ("zero", "blur", "min"):
        d_good, i_good = FF.deletion_insertion(model, x, good, target, steps=16,
                                               insertion_start=start)
        d_bad, i_bad = FF.deletion_insertion(model, x, -good, target, steps=16,
                                             insertion_start=start)
        assert (d_good < d_bad - 0.3).all() and (i_good > i_bad + 0.3).all()
        assert ((0 <= d_good) & (i_good <= 1)).all()


def test_deletion_insertion_fills_blur_and_chunking() -> None:
    torch.manual_seed(11)
    model = _tiny_cnn(size=8)
    const = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(FF._gaussian_blur(const), const)  # replicate padding keeps constants
    x, maps, y = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8), torch.tensor([0, 2])
    ids = torch.tensor([9, 4])
    ref = FF.deletion_insertion(model, x, maps, y, steps=5, fill="noise",
                                insertion_start="noise_once", ids=ids)
    for bs in (1, 3, 7):
        out = FF.deletion_insertion(model, x, maps, y, steps=5, fill="noise",
                                    insertion_start="noise_once", ids=ids, batch_size=bs)
        for a, b in zip(out, ref, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    rec = Recorder()
    FF.deletion_insertion(rec, x, maps, torch.zeros(2, dtype=torch.long), steps=4, fill="mean",
                          insertion_start="blur")
    assert len(rec.seen) == 9  # the clean forward is shared by both curves
    torch.testing.assert_close(rec.seen[4],
                               x.mean(dim=(2, 3), keepdim=True).expand_as(x))  # all deleted
    torch.testing.assert_close(rec.seen[5], FF._gaussian_blur(x))  # insertion start


# ----------------------------------------------------------------------------------------------
# HAAS


def test_haas_study_frame_is_exact_clip() -> None:
    torch.manual_seed(12)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    maps = torch.rand(4, 8, 8)
    model = Recorder()
    correct_orig, correct_ha = FF.haas(model, x, maps, torch.zeros(4, dtype=torch.long),
                                       (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(model.seen[0], x)
    assert torch.equal(model.seen[1], torch.clamp(x * (1 + maps[:, None]), -1, 1))
    assert correct_orig.dtype == torch.bool and correct_orig.all() and correct_ha.all()


def test_haas_imagenet_round_trip_and_score() -> None:
    torch.manual_seed(13)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw = torch.rand(6, 3, 16, 16)
    x = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model = _tiny_cnn(size=16)
    labels = model(x).argmax(1)
    labels[0] = (labels[0] + 1) % 3  # one original wrong
    rec = Recorder()
    FF.haas(rec, x, torch.zeros(6, 16, 16), labels, mean, std)
    torch.testing.assert_close(rec.seen[1], x, atol=1e-5, rtol=0)
    correct_orig, correct_ha = FF.haas(model, x, torch.zeros(6, 16, 16), labels, mean, std)
    assert correct_orig.sum().item() == 5 and torch.equal(correct_orig, correct_ha)
    assert FF.haas_score(correct_orig, correct_ha) == 1.0
    # highlighting in the [-1, 1] frame: a full map doubles x_pm1 before the clip
    FF.haas(rec, x, torch.ones(6, 16, 16), labels, mean, std)
    expected01 = (torch.clamp((raw * 2 - 1) * 2, -1, 1) + 1) / 2
    torch.testing.assert_close(rec.seen[-1], (expected01 - torch.tensor(mean).view(1, 3, 1, 1))
                               / torch.tensor(std).view(1, 3, 1, 1), atol=1e-5, rtol=0)
    assert FF.haas_score(torch.tensor([True, True, False, True]),
                         torch.tensor([True, False, True, False])) == pytest.approx(2 / 3)
    assert math.isnan(FF.haas_score(torch.zeros(3, dtype=torch.bool),
                                    torch.ones(3, dtype=torch.bool)))


# ----------------------------------------------------------------------------------------------
# invalid settings


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, a, y: FF.region_order(a, 4, "best"),
        lambda m, x, a, y: FF.region_order(a, 0),
        lambda m, x, a, y: FF.region_perturbation(m, x, a, y, region=0),
        lambda m, x, a, y: FF.region_perturbation(m, x, a, y, order="MoRF"),
        lambda m, x, a, y: FF.region_perturbation(m, x, a, y, fill="black"),
        lambda m, x, a, y: FF.region_perturbation(m, x, a, y, steps=0),
        lambda m, x, a, y: FF.region_perturbation(m, x, a, y, batch_size=0),
        lambda m, x, a, y: FF.deletion_insertion(m, x, a, y, steps=0),
        lambda m, x, a, y: FF.deletion_insertion(m, x, a, y, fill="blur"),
        lambda m, x, a, y: FF.deletion_insertion(m, x, a, y, insertion_start="gray"),
        lambda m, x, a, y: FF.max_sensitivity(lambda t: t[:, 0], x, a, radius=-0.1, samples=3),
        lambda m, x, a, y: FF.max_sensitivity(lambda t: t[:, 0], x, a, radius=0.1, samples=0),
        lambda m, x, a, y: FF.max_sensitivity(lambda t: t[:, 0], x, a, radius=0.1, samples=2,
                                              draws_per_call=0),
        lambda m, x, a, y: FF.haas(m, x, a, y, (0.5,), (0.5,)),
    ],
)
def test_invalid_settings_raise_config_error(call) -> None:
    model = _tiny_cnn(size=8)
    x, maps, y = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ConfigError) as err:
        call(model, x, maps, y)
    assert "\n" not in str(err.value)
