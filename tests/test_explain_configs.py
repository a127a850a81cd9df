"""Every `method=<name>` config builds its method, and the method runs on a model it supports."""

from __future__ import annotations

import hydra
import pytest
import torch
from conftest import REPO_ROOT
from omegaconf import OmegaConf

from xai_bench.explain import METHODS, ExplainMethod
from xai_bench.models import build_model

CONFIGS = sorted(p.stem for p in (REPO_ROOT / "conf" / "method").glob("*.yaml"))


def test_every_registered_method_has_a_config() -> None:
    assert set(CONFIGS) == set(METHODS)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "vit": build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                           num_heads=2).eval(),
        "cnn": build_model("resnet18", 2, 32).eval(),
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_method_config_builds_and_explains(name: str, models: dict[str, torch.nn.Module]) -> None:
    method = hydra.utils.instantiate(OmegaConf.load(REPO_ROOT / "conf" / "method" / f"{name}.yaml"))
    assert isinstance(method, ExplainMethod) and method.name == name
    # on the ViT unless the method declares no ViT (`models`; a wrapper may narrow its class's)
    model = models["vit" if "vit" in method.models else "cnn"]
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(images)
    out = method(model, images, labels=torch.tensor([0, 1, 1]))
    assert out.maps.shape == (3, 32, 32) and out.target.shape == (3,)
    assert torch.isfinite(out.maps).all()
    assert out.maps.min() >= 0 and out.maps.max() <= 1 + 1e-6
    with torch.no_grad():
        assert torch.allclose(model(images), before, atol=1e-6)  # the model is left as it was
