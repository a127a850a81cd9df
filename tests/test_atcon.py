"""ATCON (docs/atcon.md): the consistency loss, its second-order gradients, the training modes, the
alternating sampler's share, the paired data, and a real `experiment=atcon_synthetic` run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from torch import nn

from xai_bench.data import SyntheticDataModule
from xai_bench.models import build_model
from xai_bench.modules import ClassifierModule
from xai_bench.modules.consistency import (
    consistency_loss,
    global_ssim,
    pearson,
    soft_mask,
    standardise,
)
from xai_bench.modules.objectives import AlternatingSampler, ATCONObjective
from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run
from xai_bench.utils.errors import ConfigError


class TinyCNN(nn.Module):
    """Conv stages (32 px -> 8x8 features) -> global pooling -> linear: Grad-CAM's classic
    setting."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.feature_layer = self.features[-1]
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def tiny_vit(num_classes: int = 2) -> nn.Module:
    return build_model(arch="vit_tiny_patch16_224", num_classes=num_classes, img_size=32,
                       patch_size=8, depth=2, embed_dim=32, num_heads=2,
                       init={"name": "random", "pretrained": False})


def synthetic_images(n: int = 16, size: int = 32,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    dm = SyntheticDataModule(img_size=size, num_train=n, num_val=2, num_test=2, batch_size=n,
                             data_seed=seed)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return batch["image"], batch["label"]


# --- the loss ----------------------------------------------------------------------------------

def test_building_blocks_match_their_definitions() -> None:
    a = torch.rand(3, 5, 5)
    assert torch.allclose(standardise(a).flatten(1).mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(standardise(a).flatten(1).std(1), torch.ones(3), atol=1e-4)
    assert torch.allclose(pearson(a, 2 * a + 1), torch.ones(3), atol=1e-5)
    assert torch.allclose(pearson(a, -a), -torch.ones(3), atol=1e-5)
    assert torch.allclose(global_ssim(a, a), torch.ones(3), atol=1e-6)
    gb = torch.zeros(1, 4, 4)
    gb[0, 0, 0] = 10.0  # one strong pixel: above mean + std / 2, everything else below
    mask = soft_mask(gb, 8.0)
    assert mask[0, 0, 0] > 0.99 and mask[0, 1:, 1:].max() < 0.01


@pytest.mark.parametrize("make_model", [TinyCNN, tiny_vit], ids=["cnn", "vit"])
def test_consistency_gradients_are_second_order_and_reach_the_weights(make_model) -> None:
    torch.manual_seed(0)
    model = make_model()
    images, _ = synthetic_images(4)
    result = consistency_loss(model, images)
    assert result.loss.ndim == 0 and -1.0 <= result.loss.item() <= 1.0
    head = model.head.weight
    grads = torch.autograd.grad(result.loss, [p for p in model.parameters()], allow_unused=True)
    named = dict(zip([n for n, _ in model.named_parameters()], grads, strict=True))
    # the classifier head changes the loss ONLY through d(CAM)/d(weights): Grad-CAM's channel
    # weights are gradients of the head's logits. A nonzero head gradient is the second-order path.
    head_grad = named["head.weight"]
    assert head_grad is not None and head_grad.abs().sum() > 0, head.shape
    # and it is the true derivative: a finite difference along the gradient agrees
    direction = head_grad / head_grad.norm()
    eps = 1e-3
    with torch.no_grad():
        head.add_(eps * direction)
    plus = consistency_loss(model, images).loss.item()
    with torch.no_grad():
        head.sub_(2 * eps * direction)
    minus = consistency_loss(model, images).loss.item()
    with torch.no_grad():
        head.add_(eps * direction)
    assert (plus - minus) / (2 * eps) == pytest.approx(head_grad.norm().item(), rel=0.05)
    # the feature extractor gets gradients too
    assert all(g is not None and g.abs().sum() > 0
               for n, g in named.items() if n.endswith("weight") and "norm" not in n)


def test_a_few_hundred_atcon_steps_lower_the_consistency_loss() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, _ = synthetic_images(16, seed=3)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        # the later ATCON intensity (w = 100): a sharp mask, so the CAMs start out disagreeing
        loss = consistency_loss(model, images, mask_intensity=100.0).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # loss = -Pearson >= -1: the disagreement 1 + loss is what training removes
    assert 1 + first > 0.02, first
    assert 1 + last < 0.2 * (1 + first), (first, last)


@pytest.mark.parametrize("similarity,resolution", [("ssim", "feature"), ("pearson", "input")])
def test_similarity_and_resolution_options(similarity: str, resolution: str) -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    images, _ = synthetic_images(4)
    result = consistency_loss(model, images, similarity=similarity, resolution=resolution)
    result.loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    if similarity == "ssim":
        assert result.loss.item() == pytest.approx((1 - result.similarity).mean().item(), abs=1e-6)


def test_bad_options_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="objective.mode"):
        ATCONObjective(mode="semi")
    with pytest.raises(ConfigError, match="objective.similarity"):
        ATCONObjective(similarity="cosine")
    with pytest.raises(ConfigError, match="mask_intensity"):
        ATCONObjective(mask_intensity=0)


# --- the alternating sampler -------------------------------------------------------------------

@pytest.mark.parametrize("alpha,n_sup,n_unsup", [(1.0, 100, 900), (4.0, 100, 900), (0.5, 300, 300)])
def test_alternating_share_matches_alpha_n_sup_over_alpha_n_sup_plus_n_unsup(
        alpha, n_sup, n_unsup) -> None:
    sampler = AlternatingSampler(alpha, n_sup, n_unsup, seed=7)
    expected = alpha * n_sup / (alpha * n_sup + n_unsup)
    assert sampler.p_supervised == pytest.approx(expected)
    steps = 4000
    share = sum(sampler.supervised(step) for step in range(steps)) / steps
    sigma = math.sqrt(expected * (1 - expected) / steps)
    assert abs(share - expected) < 4 * sigma, (share, expected)
    # a draw depends only on (seed, step): every DDP rank and a resumed job draw the same
    again = AlternatingSampler(alpha, n_sup, n_unsup, seed=7)
    assert [again.supervised(s) for s in range(50)] == [sampler.supervised(s) for s in range(50)]
    other = AlternatingSampler(alpha, n_sup, n_unsup, seed=8)
    assert [other.supervised(s) for s in range(200)] != [sampler.supervised(s) for s in range(200)]


# --- modes inside the training module ----------------------------------------------------------

def _module(objective: ATCONObjective, multilabel: bool = False,
            num_classes: int = 2) -> ClassifierModule:
    return ClassifierModule(TinyCNN(num_classes),
                            optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                            num_classes=num_classes, multilabel=multilabel, objective=objective)


def _pair(multilabel: bool = False, num_classes: int = 2) -> dict:
    images, labels = synthetic_images(8)
    if multilabel:
        labels = (torch.rand(8, num_classes) > 0.5).float()
    return {"labelled": {"image": images, "label": labels},
            "unlabeled": {"image": images.flip(-1), "label": labels}}


def test_combining_is_supervised_plus_alpha_times_consistency() -> None:
    torch.manual_seed(0)
    module = _module(ATCONObjective(mode="combining", alpha=0.5))
    module.log = lambda *a, **k: None  # outside a Trainer
    batch = _pair()
    loss, parts = module.objective.training_loss(module, batch, step=0)
    supervised, _ = module._shared_step(batch["labelled"])
    consistency = consistency_loss(module.net, batch["unlabeled"]["image"]).loss
    assert loss.item() == pytest.approx(supervised.item() + 0.5 * consistency.item(), rel=1e-5)
    assert set(parts) == {"supervised", "consistency"}


def test_unsupervised_mode_never_reads_labels_and_multilabel_works() -> None:
    torch.manual_seed(0)
    module = _module(ATCONObjective(mode="unsupervised"), multilabel=True, num_classes=5)
    module.log = lambda *a, **k: None
    batch = _pair(multilabel=True, num_classes=5)
    del batch["unlabeled"]["label"]
    loss, parts = module.objective.training_loss(module, batch, step=0)
    loss.backward()
    assert set(parts) == {"consistency"} and module.net.head.weight.grad.abs().sum() > 0
    # combining on a multi-label dataset: BCE + consistency on the argmax class
    module = _module(ATCONObjective(mode="combining"), multilabel=True, num_classes=5)
    module.log = lambda *a, **k: None
    loss, _ = module.objective.training_loss(module, _pair(multilabel=True, num_classes=5), step=0)
    assert torch.isfinite(loss)


def test_warmup_epochs_are_supervised_only() -> None:
    module = _module(ATCONObjective(mode="combining", warmup_epochs=1))
    module.log = lambda *a, **k: None
    assert module.current_epoch == 0  # outside a Trainer
    loss, parts = module.objective.training_loss(module, _pair(), step=0)
    assert parts == {} and loss.item() == pytest.approx(
        module._shared_step(_pair()["labelled"])[0].item())
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ATCONObjective(warmup_epochs=-1)


def test_alternating_mode_takes_one_kind_of_step_per_draw() -> None:
    module = _module(ATCONObjective(mode="alternating", alpha=1.0, seed=0))
    module.log = lambda *a, **k: None
    with pytest.raises(ConfigError, match="bind"):
        module.objective.training_loss(module, _pair(), step=0)
    module.objective.bind(50, 50)
    kinds = []
    for step in range(6):
        _, parts = module.objective.training_loss(module, _pair(), step=step)
        kinds.append(parts["supervised_step"])
        assert ("supervised" in parts) == (parts["supervised_step"] == 1.0)
    assert kinds == [float(module.objective.sampler.supervised(s)) for s in range(6)]
    with pytest.raises(ConfigError, match="unlabeled batches"):
        module.objective.training_loss(module, {"image": torch.zeros(1, 3, 8, 8),
                                                "label": torch.zeros(1)}, step=0)


def test_datamodule_pairs_labelled_images_with_the_unlabeled_pool() -> None:
    dm = SyntheticDataModule(img_size=32, num_train=40, num_val=4, num_test=4, batch_size=8,
                             low_data={"per_class": 5, "seed": 0})
    dm.setup("fit")
    assert dm.train_sizes() == (10, 30)
    assert not isinstance(dm.train_dataloader(), dict)
    # what ClassifierModule.setup sets for an objective on unlabeled images
    dm.pair_unlabeled = True
    loaders = dm.train_dataloader()
    assert set(loaders) == {"labelled", "unlabeled"}
    assert len(loaders["labelled"].dataset) == 10 and len(loaders["unlabeled"].dataset) == 30
    # no pool: the training images themselves
    plain = SyntheticDataModule(img_size=32, num_train=40, num_val=4, num_test=4, batch_size=8)
    plain.setup("fit")
    assert plain.train_sizes() == (40, 40)


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_atcon_synthetic_experiment_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(["xai_bench.train", "experiment=atcon_synthetic", "debug=tiny",
                    "objective.mode=alternating", "objective.warmup_epochs=0",
                    f"hydra.run.dir={out}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2 and metrics["test"]["acc"] is not None
    config = (out / "config.yaml").read_text()
    assert "ATCONObjective" in config and "mode: alternating" in config
    run = read_offline_run(offline_run_dirs(out)[0])
    share = run.metric("train/supervised_step_epoch") or run.metric("train/supervised_step")
    assert share and all(0.0 <= s <= 1.0 for s in share)
    assert "atcon" in run.tags

    # ATCON's unsupervised fine-tuning of that model: the whole network, head included
    tuned = tmp_path / "tuned"
    proc = run_cli(["xai_bench.train", "experiment=atcon_synthetic", "debug=tiny",
                    "objective.mode=unsupervised", "objective.warmup_epochs=0",
                    f"init_from={out}", f"hydra.run.dir={tuned}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "head included" in (tuned / "train.log").read_text()
    run = read_offline_run(offline_run_dirs(tuned)[0])
    assert run.metric("train/consistency_epoch") or run.metric("train/consistency")
