"""ROAD's noisy linear imputation: the multigrid-preconditioned conjugate gradients solver
(`solver: cg`, the default, `road_multigrid`) against the sparse direct solve (`solver: direct`)
and quantus 0.6's `noisy_linear_imputation`, on scattered and blob-shaped holes from 10 % to
90 % of the image and with a single pixel kept; the ROAD curve is the same with either solver.
The hand-computed imputations and the whole-metric comparison with quantus are in
tests/test_metrics_faithfulness_curves.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xai_bench.metrics.functional import faithfulness_curves as FC
from xai_bench.metrics.functional import road_multigrid as MG
from xai_bench.metrics.functional.road_imputation import (
    ConvergenceError,
    noisy_linear_imputation,
)
from xai_bench.utils.errors import ConfigError

ATOL = 1e-5  # the default tol = 1e-7 keeps cg within ~3e-6 of the direct solve on [0, 1] images


def _images(n: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish images in [0, 1] (box-filtered uniform noise)."""
    gen = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(n, channels, height, width, generator=gen), 5, 1, 2,
                        count_include_pad=False)


def _removed(n: int, height: int, width: int, fraction: float, layout: str,
             seed: int = 1) -> torch.Tensor:
    """The top `fraction` of a random map: scattered pixels, or blobs (a smoothed map)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, 1, height, width, generator=gen)
    if layout == "blobs":
        scores = F.avg_pool2d(scores, 9, 1, 4, count_include_pad=False)
    order = scores.flatten(1).argsort(dim=1, descending=True)
    removed = torch.zeros(n, height * width, dtype=torch.bool)
    removed.scatter_(1, order[:, :int(fraction * height * width)], True)
    return removed.view(n, height, width)


@pytest.mark.parametrize("layout", ["scattered", "blobs"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_cg_matches_the_direct_solve(fraction: float, layout: str) -> None:
    # odd, non-square: 45 x 62 -> 23 x 31 -> 12 x 16 (dense)
    x = _images(3, 3, 45, 62)
    removed = _removed(3, 45, 62, fraction, layout)
    cg = noisy_linear_imputation(x, removed)
    direct = noisy_linear_imputation(x, removed, solver="direct")
    torch.testing.assert_close(cg, direct, atol=ATOL, rtol=0)
    kept = ~removed[:, None].expand_as(x)
    assert torch.equal(cg[kept], x[kept])
    assert cg.dtype == x.dtype and cg.device == x.device


def test_cg_with_a_single_pixel_kept() -> None:
    """The hardest case: one hole over the whole image but a corner (image 0) or the centre."""
    x = _images(2, 3, 40, 40)
    removed = torch.ones(2, 40, 40, dtype=torch.bool)
    removed[0, 0, 0] = removed[1, 20, 20] = False
    direct = noisy_linear_imputation(x, removed, solver="direct")
    torch.testing.assert_close(noisy_linear_imputation(x, removed), direct, atol=ATOL, rtol=0)
    exact = noisy_linear_imputation(x.double(), removed, tol=1e-12, precision="float64")
    torch.testing.assert_close(exact, direct.double(), atol=1e-9, rtol=0)
    # the solution is the kept value everywhere (a harmonic function with one boundary value)
    torch.testing.assert_close(direct[0], x[0, :, :1, :1].expand(3, 40, 40), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_cg_matches_quantus_on_one_channel(fraction: float) -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    x = _images(2, 1, 48, 48, seed=3)
    removed = _removed(2, 48, 48, fraction, "blobs", seed=4)
    ours = noisy_linear_imputation(x, removed)
    for b in range(2):
        indices = np.flatnonzero(removed[b].numpy().reshape(-1))
        theirs = quantus_imputation(x[b].double().numpy(), indices, noise=0.0)
        np.testing.assert_allclose(ours[b].numpy(), theirs, atol=ATOL, rtol=0)


def test_an_image_does_not_depend_on_its_batch() -> None:
    """Each image and channel stops on its own residual (DDP splits batches anywhere)."""
    x = _images(3, 3, 50, 50)
    removed = torch.stack([_removed(1, 50, 50, q, "blobs", seed=s)[0]
                           for s, q in ((1, 0.2), (2, 0.9), (3, 0.6))])
    whole = noisy_linear_imputation(x, removed)
    for b in range(3):
        alone = noisy_linear_imputation(x[b:b + 1], removed[b:b + 1])
        torch.testing.assert_close(alone[0], whole[b], atol=1e-6, rtol=0)


def test_noise_lands_on_the_imputed_pixels_only() -> None:
    x = _images(2, 3, 30, 30)
    removed = _removed(2, 30, 30, 0.5, "scattered")
    noise = torch.full_like(x, 0.25)
    base = noisy_linear_imputation(x, removed)
    noisy = noisy_linear_imputation(x, removed, noise)
    torch.testing.assert_close(noisy - base, 0.25 * removed[:, None].expand_as(x).float(),
                               atol=1e-6, rtol=0)


def test_the_road_curve_does_not_depend_on_the_solver() -> None:
    torch.manual_seed(0)
    size = 32
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * size * size, 3)).eval()
    x = _images(4, 3, size, size, seed=5)
    maps = torch.rand(4, size, size, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 1, 2, 1])
    common = dict(percentages=[10, 50, 90], seed=2, ids=torch.arange(4))
    for output in ("probability", "accuracy"):
        for order in ("morf", "lerf"):
            cg = FC.road_curve(model, x, maps, y, output=output, order=order, **common)
            direct = FC.road_curve(model, x, maps, y, output=output, order=order,
                                   solver="direct", **common)
            torch.testing.assert_close(cg, direct, atol=ATOL, rtol=0)


def test_cg_raises_when_it_runs_out_of_iterations() -> None:
    x = _images(2, 3, 64, 64)
    removed = _removed(2, 64, 64, 0.9, "blobs")
    with pytest.raises(ConvergenceError, match="max_iter = 2"):
        noisy_linear_imputation(x, removed, tol=1e-12, max_iter=2)


@pytest.mark.parametrize("settings, match", [
    ({"solver": "lu"}, "solver"),
    ({"precision": "float16"}, "precision"),
])
def test_invalid_solver_settings_raise(settings: dict, match: str) -> None:
    x = _images(1, 1, 8, 8)
    with pytest.raises(ConfigError, match=match):
        noisy_linear_imputation(x, torch.ones(1, 8, 8, dtype=torch.bool).tril(), **settings)


def test_the_multigrid_operators() -> None:
    """W u is the 3 x 3 stencil with zero padding; restriction is the transpose of the
    interpolation on odd, even and one-pixel grids (the V-cycle is symmetric)."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                          dtype=torch.float64).view(1, 1, 3, 3)
    expected = F.conv2d(u.view(6, 1, 9, 11), kernel, padding=1).view_as(u)
    torch.testing.assert_close(MG.neighbour_sum(u), expected)
    for height, width in ((13, 10), (14, 1), (1, 1), (224, 224), (12, 6)):
        fine = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64)
        coarse = torch.randn(2, 3, (height + 1) // 2, (width + 1) // 2, generator=gen,
                             dtype=torch.float64)
        left = (MG._prolong(coarse, height, width) * fine).sum()
        right = (MG._restrict(fine) * coarse).sum()
        torch.testing.assert_close(left, right, atol=1e-9, rtol=1e-12)
        # the in-place z += mask * P c (parity by parity on even grids) is the same
        mask = (torch.rand(fine.shape, generator=gen) < 0.5).double()
        expected = fine + mask * MG._prolong(coarse, height, width)
        torch.testing.assert_close(MG._add_prolonged(fine.clone(), mask, coarse), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cg_runs_on_the_images_device() -> None:
    x = _images(2, 3, 64, 64)
    removed = _removed(2, 64, 64, 0.7, "blobs")
    on_gpu = noisy_linear_imputation(x.cuda(), removed.cuda())
    assert on_gpu.device.type == "cuda"
    direct = noisy_linear_imputation(x, removed, solver="direct")
    torch.testing.assert_close(on_gpu.cpu(), direct, atol=ATOL, rtol=0)
