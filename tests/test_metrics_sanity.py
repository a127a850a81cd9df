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
        expected = structural_similarity_index_measure(a[row][None, None], b[row][None, None],
                                                       data_range=1.0)
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
def test_randomised_models_are_reproducible_and_leave_the_model_alone(vit: nn.Module,
                                                                      order: str) -> None:
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


def test_each_independent_step_changes_only_its_own_parameters(vit: nn.Module) -> None:
    """Under `independent`, step k changes exactly the parameters of layer k: with
    granularity=modules the root step (class token, position embedding) used to reset every
    submodule of the model through reset_parameters (22 of 32 tensors on this ViT)."""
    import copy

    vit = copy.deepcopy(vit)
    with torch.no_grad():  # "trained": no parameter at its initial value (LayerNorm's 1 / 0)
        for param in vit.parameters():
            param.add_(0.1 * torch.randn_like(param))
    before = _params(vit)
    for granularity in ("modules", "blocks"):
        layers = randomisation_layers(vit, granularity)
        named = {id(p): n for n, p in vit.named_parameters()}
        steps = randomised_models(vit, granularity=granularity, order="independent", seed=1)
        for (name, _modules, params), (step, model) in zip(layers, steps, strict=True):
            assert name == step
            changed = {k for k, v in _params(model).items()
                       if k in named.values() and not torch.equal(v, before[k])}
            assert changed == {named[id(p)] for p in params}, (granularity, name)


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
                                    enumerate(["head", "norm", "blocks.1", "blocks.0",
                                               "patch_embed+embed"])}
    assert torch.nanmean(scores["mprt/spearman/0_head"]) < 0.99


def test_invalid_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="similarity"):
        ParameterRandomisation(similarity=["pearson"])
    with pytest.raises(ConfigError, match="order"):
        ParameterRandomisation(order="bottom_up")


# ----------------------------------------------------------------------------------------------
# quantus 0.6.0 MPRT as the oracle
#
# Where quantus.MPRT and ours differ by design, and how the comparison bridges it:
# - steps: quantus randomises every module that has `reset_parameters`, output side first
#   (`layer_order="top_down"` = cascading, "independent"); that is our granularity="modules" on
#   models whose parameters all live in such modules (plain CNNs). Our default granularity
#   "blocks" groups them, and parameters no module resets (ViT class token, position embedding)
#   are drawn by us and left alone by quantus.
# - seeds: quantus calls torch.manual_seed(seed + 1) before every layer's reset (every layer of
#   one shape gets the same weights); we seed each step by (seed, step). The tests inject
#   quantus' seed into our step seeding, which makes the randomised models bit-identical (the
#   first test checks that), so the similarity scores must agree.
# - similarity: quantus' default correlation_spearman (scipy) is our "spearman"; its ssim
#   (skimage, 7 x 7 uniform window, data range of the pair) is not our SSIM (11 x 11 Gaussian,
#   sigma 1.5, data range 1, torchmetrics), so SSIM is checked against its definition instead.
# - quantus' abs / normalise preprocessing is switched off (abs=False, normalise=False): our maps
#   are already min-max normalised and Spearman is invariant to that monotone map.

QUANTUS_SEED = 42


def _mprt_cnn() -> nn.Module:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    )
    with torch.no_grad():  # non-trivial batch-norm state, so resetting it changes the maps
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _quantus_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of ours seeded as quantus seeds every layer: torch.manual_seed(seed + 1)."""
    from xai_bench.metrics.functional import sanity as F_sanity

    monkeypatch.setattr(F_sanity, "image_seed", lambda seed, step, stream=0: QUANTUS_SEED + 1)


ORDER_PAIRS = [("cascading", "top_down"), ("independent", "independent")]  # ours, quantus'


@pytest.mark.parametrize("order,quantus_order", ORDER_PAIRS)
def test_randomised_models_equal_quantus_given_its_seed(monkeypatch: pytest.MonkeyPatch, order: str,
                                                        quantus_order: str) -> None:
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model = _mprt_cnn()
    _quantus_seeding(monkeypatch)
    ours = [(name, _params(m)) for name, m in randomised_models(model, "modules", order, seed=0)]
    wrapped = PyTorchModel(model, channel_first=True, softmax=False, device="cpu")
    generator = wrapped.get_random_layer_generator(order=quantus_order, seed=QUANTUS_SEED)
    theirs = [(name, _params(m)) for name, m in generator]
    names = ["6", "3", "1", "0"]
    assert [name for name, _ in ours] == names
    # quantus' "independent" walks the modules bottom-up; each step starts from the original
    assert [name for name, _ in theirs] == (names if order == "cascading" else names[::-1])
    theirs_by_name = dict(theirs)
    original = _params(model)
    for step, (name, a) in enumerate(ours):
        b = theirs_by_name[name]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
        changed = {k for k in a if not torch.equal(a[k], original[k])}
        # cascading: this step's module and every one above it; independent: this module only
        randomised = names[: step + 1] if order == "cascading" else [name]
        assert {k.split(".")[0] for k in changed} == set(randomised), name


@pytest.mark.parametrize("method_name,kwargs", [("saliency", {}), ("gradcam", {"layer": "4"})])
@pytest.mark.parametrize("order,quantus_order", ORDER_PAIRS)
@pytest.mark.filterwarnings("ignore")
def test_spearman_scores_match_quantus_mprt(
    monkeypatch: pytest.MonkeyPatch, method_name: str, kwargs: dict, order: str, quantus_order: str
) -> None:
    import quantus

    model = _mprt_cnn()
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    method = build_method(method_name, **kwargs)
    exp = method(model, images, ids=torch.arange(5))
    batch = EvalBatch(images=images, labels=exp.target, ids=torch.arange(5), maps=exp.maps,
                      target=exp.target, logits=exp.logits, model=model, method=method)
    _quantus_seeding(monkeypatch)
    metric = ParameterRandomisation(granularity="modules", order=order, similarity=["spearman"])
    metric.update(batch)
    ours = metric.compute()

    def explain_func(
        model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object
    ) -> np.ndarray:
        out = method(model, torch.from_numpy(inputs), target=torch.from_numpy(np.asarray(targets)))
        return out.maps.numpy()

    mprt = quantus.MPRT(layer_order=quantus_order, seed=QUANTUS_SEED, abs=False, normalise=False,
                        disable_warnings=True)
    theirs = mprt(model=model, x_batch=images.numpy(), y_batch=exp.target.numpy(),
                  a_batch=exp.maps.numpy(), explain_func=explain_func, device="cpu")
    names = ["6", "3", "1", "0"]  # ours: output side first; quantus "independent" runs bottom-up
    assert list(theirs) == ["original", *(names if order == "cascading" else names[::-1])]
    # scipy gives NaN where a map is constant (a Grad-CAM map whose ReLU left nothing); ours
    # defines it (one constant map 0, both 1: see `spearman`)
    constant = exp.maps.flatten(1).std(1) == 0
    assert np.array_equal(np.isnan(theirs["original"]), constant.numpy())
    np.testing.assert_allclose(np.asarray(theirs["original"])[~constant.numpy()], 1.0, atol=1e-6)
    for step, name in enumerate(names):
        mine, ref = ours[f"mprt/spearman/{step}_{name}"].numpy(), np.asarray(theirs[name])
        defined = ~np.isnan(ref)
        np.testing.assert_allclose(mine[defined], ref[defined], atol=1e-5, err_msg=name)
        assert set(mine[~defined].tolist()) <= {0.0, 1.0}, name
    assert np.nanmin(theirs["0"]) < 0.9  # the test is not vacuous: randomising changes the maps


def _ssim_by_definition(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 SSIM with an 11-tap Gaussian window (sigma 1.5), data range 1, K1 0.01,
    K2 0.03, population (co)variances, the window mirrored at the borders (d c b | a b c d) and
    the index averaged over every pixel (torchmetrics' convention; skimage crops the borders)."""
    from scipy.ndimage import gaussian_filter

    def blur(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=1.5, truncate=3.5, mode="mirror")

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a**2, 0)
    var_b = np.maximum(blur(b * b) - mu_b**2, 0)
    cov = blur(a * b) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    index = numerator / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def test_ssim_matches_its_definition() -> None:
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(3, 24, 20, generator=gen)
    b = (0.6 * a + 0.4 * torch.rand(3, 24, 20, generator=gen)).clamp(0, 1)
    ours = ssim(a, b)
    for row in range(3):
        expected = _ssim_by_definition(a[row].double().numpy(), b[row].double().numpy())
        assert ours[row].item() == pytest.approx(expected, abs=1e-5)
    assert 0.2 < float(ours.min()) < 0.95
