"""Precision: maps are float32 under a mixed-precision autocast, evaluation refuses half weights
and keeps TF32 off, and torch.compile is refused for ATCON's second-order loss.

Tolerance of the autocast comparisons: none (bit-identical). The methods switch autocast off
and compute in the weights' float32, so a bf16 context must not change a single bit; before
that, bf16 maps differed from float32 ones by up to 0.33 on the 0-1 map scale (rollout).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from conftest import run_cli
from torch import nn
from torch.utils.data import DataLoader

from xai_bench.data.datamodule import SyntheticDataModule
from xai_bench.explain.base import build_method
from xai_bench.explain.cam import eigen_projection
from xai_bench.metrics import build_metric
from xai_bench.modules import ClassifierModule, build_optimizer
from xai_bench.modules.evaluator import ExplanationEvaluator, check_precision, tf32_disabled
from xai_bench.modules.objectives import ATCONObjective
from xai_bench.utils.errors import ConfigError

# every method that runs on a ViT, with settings cut down to a fast test
VIT_METHODS: dict[str, dict] = {
    "attention": {},
    "rollout": {},
    "chefer": {},
    "chefer_generic": {},
    "gradcam": {},
    "hirescam": {},
    "gradcam_study": {},  # eigen_smooth (numpy SVD) + aug_smooth, target 1
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 8},
    "guided_backprop": {},
}
# the methods only CNNs have, and the SVD path that fed bf16 to numpy on a conv layer
CNN_METHODS: dict[str, dict] = {"gradcam": {}, "gradcam_study": {}, "deeplift": {}, "lrp": {}}


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        num_heads=2,
        depth=2,
        num_classes=2,
    ).eval()
    with torch.no_grad():  # timm's init gives near-uniform attention; sharpen it a little
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(8.0)
        model.head.weight.normal_(0, 1.0)
    return model


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)

    @property
    def feature_layer(self) -> nn.Module:
        return self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("model_name", "name"), [("vit", n) for n in VIT_METHODS] + [("cnn", n) for n in CNN_METHODS]
)
def test_maps_under_bf16_autocast_equal_float32(model_name: str, name: str) -> None:
    model = tiny_vit() if model_name == "vit" else TinyCNN().eval()
    kwargs = (VIT_METHODS if model_name == "vit" else CNN_METHODS)[name]
    method = build_method(name, **kwargs)
    x = _images()
    reference = method(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method(model, x)
    assert mixed.maps.dtype == torch.float32 and mixed.raw.dtype == torch.float32
    assert torch.isfinite(mixed.maps).all()
    torch.testing.assert_close(mixed.maps, reference.maps, rtol=0, atol=0)
    torch.testing.assert_close(mixed.raw, reference.raw, rtol=0, atol=0)
    assert torch.equal(mixed.target, reference.target)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model is untouched


def test_bf16_images_are_explained_in_the_weights_precision() -> None:
    model, x = tiny_vit(), _images()
    for name in ("rollout", "chefer"):
        out = build_method(name)(model, x.bfloat16())
        ref = build_method(name)(model, x.bfloat16().float())
        assert out.maps.dtype == torch.float32 and torch.equal(out.maps, ref.maps)


def test_half_precision_weights_are_refused_with_one_message() -> None:
    model = tiny_vit().bfloat16()
    with pytest.raises(ConfigError, match=r"weights are torch.bfloat16.*trainer.precision=32-true"):
        build_method("rollout")(model, _images().bfloat16())


def test_eigen_projection_takes_half_floats() -> None:
    weighted = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    for sign in ("library", "svd", "align"):
        half = eigen_projection(weighted.bfloat16(), sign)
        full = eigen_projection(weighted.bfloat16().float(), sign)
        assert half.dtype == torch.float32 and torch.equal(half, full)


# --------------------------------------------------------------------------- evaluation


def test_precision_policy() -> None:
    assert check_precision("32-true") and check_precision("64-true")
    assert check_precision("bf16-mixed") is False and check_precision("16-mixed") is False
    for half in ("bf16-true", "16-true", "transformer-engine"):
        with pytest.raises(
            ConfigError, match=r"trainer.precision=\S+ puts the model's weights in half"
        ):
            check_precision(half)


def test_tf32_is_off_during_evaluation_and_restored() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with tf32_disabled():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with tf32_disabled(allow=True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class _RecordingRollout:
    """Wraps a method and records the TF32 / autocast state each call sees."""

    def __init__(self) -> None:
        self.method = build_method("rollout")
        self.seen: list[tuple[bool, bool, bool]] = []

    def __getattr__(self, name: str):
        return getattr(self.method, name)

    def __call__(self, *args, **kwargs):
        self.seen.append(
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.is_autocast_enabled("cpu"),
            )
        )
        return self.method(*args, **kwargs)


def _evaluate(
    precision: str, allow_tf32: bool = False
) -> tuple[ExplanationEvaluator, _RecordingRollout]:
    data = SyntheticDataModule(img_size=32, num_train=8, num_val=8, num_test=6, batch_size=3)
    loader: DataLoader = data.eval_dataloader("test")
    recorder = _RecordingRollout()
    metrics = {
        "pointing_game": partial(build_metric, "pointing_game"),
        "aopc": partial(build_metric, "aopc", region=[8], steps=3, fill="zero", only_correct=False),
    }
    module = ExplanationEvaluator(
        tiny_vit(),
        {"rollout": recorder, "chefer": build_method("chefer")},
        metrics,
        num_classes=2,
        allow_tf32=allow_tf32,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        inference_mode=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    return module, recorder


def _flat(results: dict) -> dict[str, np.ndarray]:
    out = {f"pred/{k}": v.numpy() for k, v in results["predictions"].items()}
    for method, entry in results["methods"].items():
        for group in ("maps",):
            out.update({f"{method}/{group}/{k}": v.numpy() for k, v in entry[group].items()})
        for key, columns in entry["metrics"].items():
            out.update({f"{method}/{key}/{k}": v.numpy() for k, v in columns.items()})
    return out


def test_evaluation_under_bf16_mixed_equals_32_true() -> None:
    full, full_calls = _evaluate("32-true")
    with pytest.warns(UserWarning, match="bf16-mixed is ignored: evaluation computes in float32"):
        mixed, mixed_calls = _evaluate("bf16-mixed")
    a, b = _flat(full.results), _flat(mixed.results)
    assert a.keys() == b.keys() and any(k.startswith("rollout/aopc") for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # TF32 off and autocast off in every call; the flags are back afterwards
    assert full_calls.seen and all(
        seen == (False, False, False) for seen in full_calls.seen + mixed_calls.seen
    )


def test_evaluation_allow_tf32_is_passed_through() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    _, calls = _evaluate("32-true", allow_tf32=True)
    assert calls.seen and all(seen[:2] == (True, True) for seen in calls.seen)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_evaluation_refuses_half_weights() -> None:
    with pytest.raises(
        ConfigError, match="trainer.precision=bf16-true puts the model's weights in half"
    ):
        _evaluate("bf16-true")


# --------------------------------------------------------------------------- compile x ATCON


def _classifier(compile: bool, objective) -> ClassifierModule:
    return ClassifierModule(
        TinyCNN(),
        optimizer=partial(build_optimizer, name="adamw", lr=1e-3),
        num_classes=2,
        compile=compile,
        objective=objective,
    )


@pytest.mark.parametrize("mode", ["unsupervised", "alternating", "combining"])
def test_compile_with_atcon_is_refused_at_construction(mode: str) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"module.compile=true cannot train objective=atcon mode={mode}: .*"
        r"set module.compile=false",
    ):
        _classifier(True, ATCONObjective(mode=mode))
    _classifier(False, ATCONObjective(mode=mode))  # without compile: fine
    _classifier(True, ATCONObjective(mode="supervised"))  # first order: compile is fine


@pytest.mark.slow
def test_compile_with_atcon_cli_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        [
            "xai_bench.train",
            "debug=tiny",
            "module.compile=true",
            "objective=atcon",
            "logger=none",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "module.compile=true" in line]
    assert len(lines) == 1 and "set module.compile=false" in lines[0]
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()
    assert not (out / "metrics.json").exists()
