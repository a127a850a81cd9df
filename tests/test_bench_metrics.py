"""scripts/bench_metrics.py: the rows bridged to Quantus / captum compute the same scores as
ours (on a small ViT: the bridges for a timm ViT are the bench's own, not the metric tests')."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from conftest import REPO_ROOT

from xai_bench.explain import build_method
from xai_bench.metrics.functional.sanity import randomisation_layers, randomised_models
from xai_bench.models import build_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

SIZE = 32


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("quantus")
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import bench_metrics
        import bench_metrics_bridges

        yield bench_metrics, bench_metrics_bridges
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", 2, SIZE,
                        init={"name": "random", "pretrained": False}, patch_size=8, depth=2,
                        embed_dim=32, num_heads=2).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_frozen_embeddings_make_our_randomised_vit_quantus(bench, vit) -> None:
    """The class token and position embedding as buffers, our "modules" steps seeded as
    Quantus seeds its layers: every cascading step is Quantus' model, bit for bit."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    _, bridges = bench
    frozen = bridges.frozen_embeddings(vit)
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(frozen(x), vit(x))  # the same function
    assert "root" in [name for name, _, _ in randomisation_layers(vit, "modules")]
    assert "root" not in [name for name, _, _ in randomisation_layers(frozen, "modules")]
    wrapped = PyTorchModel(frozen, channel_first=True, softmax=False, device="cpu")
    theirs = [(name, {k: v.clone() for k, v in m.state_dict().items()}) for name, m in
              wrapped.get_random_layer_generator(order="top_down", seed=bridges.QUANTUS_SEED)]
    with bridges.quantus_layer_seeding():
        ours = [(name, {k: v.clone() for k, v in m.state_dict().items()}) for name, m in
                randomised_models(frozen, "modules", "cascading")]
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    for (name, a), (_, b) in zip(ours, theirs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_gray_view_is_the_model_on_the_repeated_channel_mean(bench, vit) -> None:
    _, bridges = bench
    x = torch.randn(2, 3, SIZE, SIZE)
    gray = bridges.gray_images(x)
    expected = vit(gray.expand(-1, 3, -1, -1))
    torch.testing.assert_close(bridges.Gray(vit)(gray), expected)
    blocks = bridges.gray_images(x, 8)
    assert blocks.shape == (2, 1, 4, 4)
    up = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3).expand(-1, 3, -1, -1)
    torch.testing.assert_close(bridges.Gray(vit, block=8)(blocks), vit(up))


ROWS = ["irof", "road", "non_sensitivity", "infidelity", "sensitivity_n (both n)",
        "max_sensitivity", "random_logit", "parameter_randomisation (every layer)",
        "smooth_mprt (last layer)", "efficient_mprt", "input_invariance"]


def test_bridged_rows_agree_with_their_peer(bench, vit) -> None:
    bench_metrics, _ = bench
    from bench_metrics_quantus import ROWS as ALL_ROWS

    args = argparse.Namespace(samples=3, segments=4, radius=0.05, region=8, repeats=1,
                              features=64, no_quantus_model=False)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    method, device = build_method("saliency"), torch.device("cpu")
    inputs = {}
    rows = {r.label or r.name: r for r in ALL_ROWS}
    for label in ROWS:
        row = rows[label]
        if row.variant not in inputs:
            model, images = ((vit, x) if row.variant == "rgb" else
                             bench_metrics.make_variant(row.variant, vit, x, args.region))
            inputs[row.variant] = bench_metrics.make_inputs(model, images, None, method, device,
                                                            1, args)
        cells = bench_metrics.run_row(row, inputs[row.variant], device, args)
        diff = cells[-1]
        assert not diff.startswith(("error", "none", "-")), (label, diff)
        assert float(diff.split()[0]) < 1e-4, (label, diff)
