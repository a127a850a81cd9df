"""Parameter randomisation test: layer lists, reproducible randomisation, similarity measures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from xai_bench.explain import build_method
from xai_bench.metrics.base import EvalBatch
from xai_bench.metrics.functional.sanity import (
    average_ranks,
    randomisation_layers,
    randomised_models,
    spearman,
    ssim,
)
from xai_bench.metrics.sanity import ParameterRandomisation
from xai_bench.models import build_model
from xai_bench.utils.errors import ConfigError


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", 2, 32, init={"name": "random", "pretrained": False},
                       patch_size=8, depth=2, embed_dim=32, num_heads=2).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_average_ranks_match_scipy_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (4, 50), generator=gen).double()
    ours = average_ranks(values)
    for row in range(4):
        np.testing.assert_allclose(ours[row].numpy(), rankdata(values[row].numpy()) - 1)


def test_spearman_matches_scipy_and_defines_constant_maps() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 8, 8, generator=gen)
    b = (a + 0.5 * torch.rand(3, 8, 8, generator=gen)).round(decimals=1)  # ties on one side
    ours = spearman(a, b)
    for row in range(3):
        expected = spearmanr(a[row].flatten().numpy(), b[row].flatten().numpy()).statistic
        assert ours[row].item() == pytest.approx(expected, abs=1e-6)
    assert spearman(a, a).tolist() == pytest.approx([1.0] * 3)
    assert spearman(a[:1], torch.zeros(1, 8, 8)).tolist() == [0.0]  # collapsed: no ordering kept
    assert spearman(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)).tolist() == [1.0]
    nan_map = a[:1].clone()
    nan_map[0, 0, 0] = float("nan")
    assert torch.isnan(spearman(nan_map, a[:1])).all()


def test_ssim_is_torchmetrics_per_map() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 32, 32, generator=gen), torch.rand(3, 32, 32, generator=gen)
    ours = ssim(a, b)
    for row in range(3):
        expected = structural_similarity_index_measure(a[row][None, None], b[row][None, None], data_range=1.0)
        assert ours[row].item() == pytest.approx(expected.item(), abs=1e-6)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_vit_layers_are_top_down_blocks(vit: nn.Module) -> None:
    names = [name for name, _, _ in randomisation_layers(vit)]
    assert names == ["head", "norm", "blocks.1", "blocks.0", "patch_embed+embed"]
    covered = {id(p) for _, _, params in randomisation_layers(vit) for p in params}
    assert covered == {id(p) for p in vit.parameters()}  # cls token and pos embed included
    fine = randomisation_layers(vit, "modules")
    assert len(fine) > len(names) and fine[0][0] == "head"
    with pytest.raises(ConfigError, match="granularity"):
        randomisation_layers(vit, "layers")


def test_cnn_sequences_are_opened_one_level() -> None:
    names = [name for name, _, _ in randomisation_layers(_cnn())]
    assert names == ["6", "3.0", "1", "0"]


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_randomised_models_are_reproducible_and_leave_the_model_alone(vit: nn.Module, order: str) -> None:
    before = _params(vit)
    first = [(name, _params(model)) for name, model in randomised_models(vit, order=order, seed=3)]
    again = [(name, _params(model)) for name, model in randomised_models(vit, order=order, seed=3)]
    other = [_params(model) for _, model in randomised_models(vit, order=order, seed=4)]
    assert all(torch.equal(before[k], v) for k, v in _params(vit).items())
    for (name, a), (_, b) in zip(first, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert not torch.equal(first[0][1]["head.weight"], other[0]["head.weight"])
    # cascading keeps the head randomised at the last step; independent restores it
    last = first[-1][1]
    assert torch.equal(last["head.weight"], before["head.weight"]) is (order == "independent")
    assert not torch.equal(last["pos_embed"], before["pos_embed"])
    assert torch.equal(first[0][1]["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def _batch(model: nn.Module, method_name: str, images: torch.Tensor) -> EvalBatch:
    method = build_method(method_name)
    ids = torch.arange(images.shape[0])
    exp = method(model, images, ids=ids)
    return EvalBatch(images=images, labels=exp.target, ids=ids, maps=exp.maps, target=exp.target,
                     logits=exp.logits, model=model, method=method)


def test_attention_map_ignores_the_head_but_not_the_blocks(vit: nn.Module) -> None:
    """Class-agnostic attention cannot see a randomised head (similarity 1) — the test shows it."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = ParameterRandomisation(similarity=["spearman"])
    metric.update(_batch(vit, "attention", images))
    scores = metric.compute()
    assert scores["mprt/spearman/0_head"].tolist() == pytest.approx([1.0] * 4)
    assert (scores["mprt/spearman/2_blocks.1"] < 0.99).all()
    assert scores["id"].tolist() == [0, 1, 2, 3]


def test_gradcam_changes_when_the_head_is_randomised(vit: nn.Module) -> None:
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    metric = ParameterRandomisation()
    metric.update(_batch(vit, "gradcam", images))
    scores = metric.compute()
    assert set(scores) == {"id"} | {f"mprt/{s}/{i}_{n}" for s in ("spearman", "ssim") for i, n in
                                    enumerate(["head", "norm", "blocks.1", "blocks.0", "patch_embed+embed"])}
    assert torch.nanmean(scores["mprt/spearman/0_head"]) < 0.99


def test_invalid_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="similarity"):
        ParameterRandomisation(similarity=["pearson"])
    with pytest.raises(ConfigError, match="order"):
        ParameterRandomisation(order="bottom_up")
