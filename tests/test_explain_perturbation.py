"""RISE, LIME and KernelSHAP: LIME / KernelSHAP against captum's Lime / KernelShap on the same
feature mask and the SAME sampled interpretable inputs (captum's sampling is replaced by a
generator of ours) with the same regression; RISE's masks against scikit-image's resize (the
paper's construction) and its estimate against the closed-form expectation on a linear model;
hand cases, batching invariance, passes and invalid settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge
from captum.attr import KernelShap as CaptumKernelShap
from captum.attr import Lime as CaptumLime
from skimage.transform import resize
from tiny_models import tiny_vit
from torch import nn

from xai_bench.explain import perturbation as P
from xai_bench.explain.base import build_method
from xai_bench.explain.feature_masks import feature_mask
from xai_bench.explain.surrogate import shap_samples
from xai_bench.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IDS = torch.tensor([11, 4, 7])


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def linear_model(channels: int, size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 2)).double().eval()
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.3, -0.7]))
    return model


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return tiny_vit()


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# LIME / KernelSHAP against captum


def _captum_run(cls: type, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor, counts: torch.Tensor, z: torch.Tensor, alpha: float,
                output: str) -> list[torch.Tensor]:
    """captum's attribution of each image alone, on our mask and our samples."""

    def forward(inp: torch.Tensor) -> torch.Tensor:
        out = model(inp)
        return out.softmax(-1) if output == "probability" else out

    refs = []
    for i in range(x.shape[0]):
        rows = z[i, :, : int(counts[i])].long()

        def ours(_inp: torch.Tensor, rows: torch.Tensor = rows, **_kw: object):  # noqa: ANN202
            yield from (row.view(1, -1) for row in rows)

        if cls is CaptumLime:
            regression = SkLearnRidge(alpha=alpha) if alpha > 0 else SkLearnLinearRegression()
            explainer = CaptumLime(forward, interpretable_model=regression, perturb_func=ours)
        else:
            explainer = CaptumKernelShap(forward)
            explainer.perturb_func = ours  # replaces captum's coalition sampler
        attr = explainer.attribute(x[i:i + 1], target=int(target[i]),
                                   feature_mask=mask[i].view(1, 1, *mask.shape[1:]),
                                   n_samples=z.shape[1], perturbations_per_eval=16)
        refs.append(attr[0, 0])
    return refs


CASES = [  # (method, model, features, extra settings)
    ("lime", "vit", "patches", {}),
    ("lime", "cnn", "superpixels", {"alpha": 0.5, "output": "probability"}),
    ("kernel_shap", "vit", "patches", {}),
    ("kernel_shap", "cnn", "superpixels", {"output": "probability"}),
]


@pytest.mark.parametrize(("name", "model_name", "features", "extra"), CASES)
def test_surrogates_match_captum_on_the_same_samples(
        request: pytest.FixtureRequest, name: str, model_name: str, features: str,
        extra: dict) -> None:
    model = request.getfixturevalue(model_name)
    x = _images(3, 32 if model_name == "vit" else 24)
    method = build_method(name, samples=60, features=features, n_segments=8, batch_size=50,
                          normalize="none", **extra)
    out = method(model, x, ids=IDS)
    mask, counts = feature_mask(model, x, features, n_segments=8)
    if features == "superpixels":
        assert counts.unique().numel() > 1  # padding to the largest count is exercised
    z = method.sample(IDS, counts, x.device)
    cls = CaptumLime if name == "lime" else CaptumKernelShap
    refs = _captum_run(cls, model, x, out.target, mask, counts, z, extra.get("alpha", 0.0),
                       method.output)
    ours = out.raw.double()
    if ours.shape[-1] != x.shape[-1]:  # patch grid -> pixels
        ours = ours.repeat_interleave(8, 1).repeat_interleave(8, 2)
    for i, ref in enumerate(refs):
        scale = ref.abs().max().item()
        # captum fits in float32 (its outputs are cast); ours in float64
        torch.testing.assert_close(ours[i], ref.double(), atol=1e-5 * scale, rtol=0)


def test_surrogates_are_exact_on_a_linear_model() -> None:
    """On f = w.x + b the score is linear in the samples: LIME and KernelSHAP recover each
    patch's contribution sum_{pixels in f} w x exactly (the Shapley values of a linear model)."""
    model, x = linear_model(3, 8), _images(2, 8)
    contrib = (model[1].weight[1].view(3, 8, 8) * x).sum(1)  # (B, 8, 8) per pixel, class 1
    expect = contrib.view(2, 2, 4, 2, 4).sum((2, 4))  # 4x4 patches -> (B, 2, 2)
    for name in ("lime", "kernel_shap"):
        out = build_method(name, samples=40, patch_size=4, target=1, normalize="none")(model, x)
        torch.testing.assert_close(out.raw, expect, atol=1e-8, rtol=0)


def test_kernel_shap_efficiency_and_coalition_sizes(vit: nn.Module) -> None:
    x = _images(2, 32)
    out = build_method("kernel_shap", samples=80, normalize="none")(vit, x, ids=IDS[:2])
    with torch.no_grad():
        gap = vit(x).gather(1, out.target.view(-1, 1)).view(-1) - vit(torch.zeros_like(x)).gather(
            1, out.target.view(-1, 1)).view(-1)
    torch.testing.assert_close(out.raw.sum((1, 2)), gap, atol=1e-5, rtol=0)
    # sizes of sampled coalitions follow P(k) ~ 1 / (k (M - k)) (M = 16 features)
    z = shap_samples(torch.arange(200), torch.full((200,), 16), 52, 0, 0, torch.device("cpu"))
    assert torch.equal(z[:, 0], torch.ones(200, 16)) and not z[:, 1].any()
    sizes = z[:, 2:].sum(-1).long().flatten()
    k = torch.arange(1, 16, dtype=torch.float64)
    prob = 1 / (k * (16 - k))
    freq = torch.bincount(sizes, minlength=16)[1:].double() / sizes.numel()
    torch.testing.assert_close(freq, prob / prob.sum(), atol=0.015, rtol=0)


# ----------------------------------------------------------------------------------------------
# RISE


@pytest.mark.parametrize(("size", "grid"), [(12, 3), (10, 4), (9, 2)])
def test_rise_masks_are_the_papers_construction(size: int, grid: int) -> None:
    """Bilinear upsampling to (s + 1) * ceil(H / s) with reflected edges, then a shifted crop:
    scikit-image's resize(order=1, mode='reflect', anti_aliasing=False) as in the paper's code."""
    cell = -(-size // grid)
    rows = P.rise_interpolation(size, grid, cell)
    gen = torch.Generator().manual_seed(0)
    for dy, dx in [(0, 0), (cell - 1, 1 % cell), (1 % cell, cell - 1)]:
        g = (torch.rand(grid, grid, generator=gen) < 0.5).double()
        ref = resize(g.numpy(), ((grid + 1) * cell,) * 2, order=1, mode="reflect",
                     anti_aliasing=False)[dy:dy + size, dx:dx + size]
        ours = P.rise_masks(g[None], torch.tensor([[dy, dx]]), rows, rows)[0]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(rows.sum(-1), torch.ones(cell, size, dtype=torch.float64))


def _rise_expectation(model: nn.Module, x: torch.Tensor, target: int, p: float, grid: int
                      ) -> torch.Tensor:
    """E[map] = b + p sum_k a_k + (1 - p) (Ry A Cx)_j for f(x) = w.x + b, a = per-pixel w x:
    with m = R_dy G C_dx^T and G's cells Bernoulli(p), E[m_j] = p and E[m_j m_k] = p^2 +
    p (1 - p) K_jk with K the mean over shifts of the interpolation overlap (K = I for
    binary pixel masks: the rough formula p (b + p w.x + (1 - p) w_j x_j) / p)."""
    size = x.shape[-1]
    w, b = model[1].weight[target].view(3, size, size), model[1].bias[target]
    a = (w * x[0]).sum(0)
    rows = P.rise_interpolation(size, grid, -(-size // grid))
    ry = (rows @ rows.transpose(1, 2)).mean(0)  # the mean over shifts of R R^T
    return b + p * a.sum() + (1 - p) * ry @ a @ ry.T


def test_rise_converges_to_its_closed_form_on_a_linear_model() -> None:
    size, grid, p = 10, 4, 0.4
    model, x = linear_model(3, size), _images(1, size)
    expect = _rise_expectation(model, x, 1, p, grid).detach()
    a = (model[1].weight[1].view(3, size, size) * x[0]).sum(0).detach()
    rough = model[1].bias[1].detach() + p * a.sum() + (1 - p) * a  # K = I: wrong for RISE masks
    errors = []
    for n in (400, 12800):
        method = build_method("rise", n_masks=n, grid_size=grid, p=p, target=1, output="logit",
                              normalize="none", batch_size=2048, seed=3)
        raw = method(model, x, ids=torch.tensor([5])).raw[0]
        # the per-pixel spread of one mask's term f(x * M) M / p, from the same draws
        grids, shifts = method.draws(torch.tensor([5]), size, size, torch.device("cpu"))
        rows = P.rise_interpolation(size, grid, -(-size // grid))
        masks = P.rise_masks(grids[0].double(), shifts[0], rows, rows)
        with torch.no_grad():
            terms = model(x * masks.unsqueeze(1))[:, 1].view(-1, 1, 1) * masks / p
        torch.testing.assert_close(raw, terms.mean(0))  # the estimator is that mean
        tol = 4.5 * terms.std(0) / n**0.5  # shrinks like 1 / sqrt(N)
        assert ((raw - expect).abs() <= tol).all(), (raw - expect).abs().max()
        errors.append((raw - expect).abs().max().item())
        if n > 1000:  # the test can fail: the binary-mask formula is out of tolerance
            assert ((raw - rough).abs() > tol).any()
    assert errors[1] < errors[0]


def test_rise_is_independent_of_batch_and_chunking(vit: nn.Module) -> None:
    x = _images(3, 32)
    method = build_method("rise", n_masks=50, batch_size=7, normalize="none")
    full = method(vit, x, ids=IDS).raw
    alone = build_method("rise", n_masks=50, batch_size=64, normalize="none")(
        vit, x[2:], ids=IDS[2:]).raw
    torch.testing.assert_close(full[2:], alone, atol=1e-10, rtol=0)
    other = build_method("rise", n_masks=50, seed=1, normalize="none")(vit, x, ids=IDS).raw
    assert not torch.allclose(full, other)


# ----------------------------------------------------------------------------------------------
# shared: passes, batching, settings


@pytest.mark.parametrize(("name", "settings", "per_image"), [
    ("rise", {"n_masks": 30}, 31), ("lime", {"samples": 20}, 21),
    ("kernel_shap", {"samples": 20, "features": "superpixels", "n_segments": 5}, 21),
])
def test_passes_are_counted_exactly(cnn: nn.Module, name: str, settings: dict,
                                    per_image: int) -> None:
    seen = []
    handle = cnn.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape[0]))
    method = build_method(name, batch_size=16, **settings)
    try:
        method(cnn, _images(3, 16), ids=IDS)
    finally:
        handle.remove()
    assert sum(seen) / 3 == per_image == method.passes(cnn, 16, 16).forwards
    assert max(seen) <= 16 and method.passes(cnn, 16, 16).backwards == 0


def test_surrogate_maps_do_not_depend_on_the_batch(cnn: nn.Module) -> None:
    x = _images(3, 24)
    for name in ("lime", "kernel_shap"):
        method = build_method(name, samples=30, features="superpixels", n_segments=8,
                              normalize="none")
        full = method(cnn, x, ids=IDS).raw
        alone = method(cnn, x[1:2], ids=IDS[1:2]).raw
        torch.testing.assert_close(full[1:2], alone, atol=1e-9, rtol=0)


def test_patch_features_follow_the_vit_token_grid(vit: nn.Module, cnn: nn.Module) -> None:
    x = _images(1, 32)
    mask, counts = feature_mask(vit, x, "patches")
    assert int(counts[0]) == 16 and mask[0, 7, 7] == 0 and mask[0, 8, 0] == 4
    mask, counts = feature_mask(cnn, x, "patches")  # CNN: 16 px patches
    assert int(counts[0]) == 4 and mask[0, 31, 31] == 3
    mask, counts = feature_mask(cnn, _images(1, 20), "patches", patch_size=8)  # partial patches
    assert int(counts[0]) == 9 and mask[0, 19, 19] == 8
    mask, counts = feature_mask(cnn, x, "superpixels", n_segments=6)
    assert set(mask.unique().tolist()) == set(range(int(counts[0])))


@pytest.mark.parametrize(("name", "settings"), [
    ("rise", {"n_masks": 0}), ("rise", {"p": 0.0}), ("rise", {"p": 1.5}),
    ("rise", {"grid_size": 0}), ("rise", {"batch_size": 0}), ("rise", {"output": "softmax"}),
    ("lime", {"samples": 1}), ("lime", {"features": "pixels"}), ("lime", {"kernel_width": 0}),
    ("lime", {"alpha": -1}), ("lime", {"patch_size": 0}), ("kernel_shap", {"n_segments": 0}),
    ("kernel_shap", {"compactness": 0}), ("kernel_shap", {"slic_sigma": -1}),
])
def test_invalid_settings_are_config_errors(name: str, settings: dict) -> None:
    with pytest.raises(ConfigError):
        build_method(name, **settings)
