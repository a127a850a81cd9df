"""Model building and weight loading: tiny ViTs/CNNs, weight files written by the tests
themselves."""

from __future__ import annotations

import collections
import functools
import socket
from pathlib import Path
from typing import Any

import pytest
import timm
import timm.layers.config
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.layers.cbam import CbamModule
from timm.layers.squeeze_excite import SEModule
from torch import nn

from xai_bench.models import (
    CBAM,
    FlattenHeadClassifier,
    SqueezeExcite,
    attention_modules,
    build_model,
    load_checkpoint_safely,
    load_state_dict_file,
)
from xai_bench.models import weight_sources as weights_mod
from xai_bench.utils.errors import (
    ConfigError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    XaiBenchError,
)

ARCH = "vit_tiny_patch16_224"
TINY: dict[str, Any] = dict(patch_size=8, depth=2, embed_dim=64, num_heads=2)
HEAD_KEYS = ("head.weight", "head.bias")


def _init(name: str, **overrides: Any) -> dict[str, Any]:
    """An init config like conf/init/<name>.yaml, never allowed on the hub unless asked."""
    base: dict[str, Any] = {
        "random": dict(pretrained=False, hub_tag=None, file=None),
        "dino": dict(pretrained=True, hub_tag="dino", file="dino_vitbase16_pretrain.pth"),
        "mae": dict(
            pretrained=True,
            hub_tag=None,
            file="mae_finetuned_vit_base.pth",
            key_map={"fc_norm.": "norm."},
        ),
        "sup": dict(
            pretrained=True,
            hub_tag="augreg_in21k_ft_in1k",
            file=f"{ARCH}.augreg_in21k_ft_in1k.safetensors",
        ),
        "mae_pretrain": dict(pretrained=True, hub_tag="mae", file=f"{ARCH}.mae.safetensors"),
    }[name]
    return {"name": name, "path": None, "key_map": {}, "allow_hub": False, **base, **overrides}


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    # Non-default values everywhere, so "loaded == file" cannot pass by coincidence (norm = 1).
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _tiny_state(img_size: int = 32, seed: int = 0, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A tiny ViT's state dict with an ImageNet-style 1000-class head, like a release file."""
    model = timm.create_model(
        ARCH, pretrained=False, num_classes=1000, img_size=img_size, **{**TINY, **kwargs}
    )
    return {k: v.clone() for k, v in _randomised(model, seed).state_dict().items()}


def _build(
    init: dict[str, Any] | None, weights_dir: Path | None = None, img_size: int = 32, **kw: Any
) -> nn.Module:
    return build_model(
        ARCH,
        2,
        img_size,
        init=init,
        weights_dir=None if weights_dir is None else str(weights_dir),
        **{**TINY, **kw},
    )


def _assert_backbone_equals(
    model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in HEAD_KEYS or key in skip:
            continue
        assert torch.equal(own[key], value), key


def _assert_fresh_head(model: nn.Module, num_classes: int = 2) -> None:
    assert model.get_classifier().out_features == num_classes


# ---------------------------------------------------------------------------------------------
# random init


def test_random_init_builds_with_fresh_head() -> None:
    model = _build(_init("random"))
    _assert_fresh_head(model)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    assert model.xai_arch == ARCH and model.xai_init == "random" and model.xai_weights is None
    assert model.feature_layer is None  # transformers: CAM code uses the blocks instead


def test_init_none_and_dictconfig_are_accepted() -> None:
    assert _build(None).xai_init == "random"
    cfg = OmegaConf.create(_init("random"))
    assert _build(cfg).xai_init == "random"


# ---------------------------------------------------------------------------------------------
# pretrained files in the weights folder


def test_dino_plain_dict_loads_with_fresh_head(tmp_path: Path) -> None:
    state = _tiny_state()
    torch.save(state, tmp_path / "dino_vitbase16_pretrain.pth")
    model = _build(_init("dino"), tmp_path)
    _assert_backbone_equals(model, state)
    _assert_fresh_head(model)
    assert model.xai_init == "dino"
    assert model.xai_weights == str(tmp_path.resolve() / "dino_vitbase16_pretrain.pth")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_dino_teacher_checkpoint_with_backbone_prefix(tmp_path: Path) -> None:
    state = _tiny_state()
    teacher = {f"backbone.{k}": v for k, v in state.items() if k not in HEAD_KEYS}
    teacher["head.mlp.0.weight"] = torch.zeros(8, 64)  # DINO projection head: not the classifier
    torch.save({"teacher": teacher, "epoch": 3}, tmp_path / "dino_vitbase16_pretrain.pth")
    _assert_backbone_equals(_build(_init("dino"), tmp_path), state)


def test_mae_finetuned_renames_fc_norm_into_norm(tmp_path: Path) -> None:
    state = _tiny_state()
    file_state = {
        (k.replace("norm.", "fc_norm.", 1) if k.startswith("norm.") else k): v
        for k, v in state.items()
    }
    assert "fc_norm.weight" in file_state and "norm.weight" not in file_state
    torch.save({"model": file_state}, tmp_path / "mae_finetuned_vit_base.pth")
    model = _build(_init("mae"), tmp_path)
    assert torch.equal(model.norm.weight, file_state["fc_norm.weight"])
    assert torch.equal(model.norm.bias, file_state["fc_norm.bias"])
    _assert_backbone_equals(model, state)
    _assert_fresh_head(model)


def test_mae_without_key_map_fails_naming_the_keys(tmp_path: Path) -> None:
    state = _tiny_state()
    file_state = {
        (k.replace("norm.", "fc_norm.", 1) if k.startswith("norm.") else k): v
        for k, v in state.items()
    }
    torch.save({"model": file_state}, tmp_path / "mae_finetuned_vit_base.pth")
    with pytest.raises(XaiBenchError, match="does not match the architecture") as err:
        _build(_init("mae", key_map={}), tmp_path)
    assert "fc_norm.weight" in str(err.value) and "norm.weight" in str(err.value)


def test_sup_safetensors_loads(tmp_path: Path) -> None:
    state = _tiny_state()
    save_file(state, str(tmp_path / f"{ARCH}.augreg_in21k_ft_in1k.safetensors"))
    model = _build(_init("sup"), tmp_path)
    _assert_backbone_equals(model, state)
    _assert_fresh_head(model)


def test_hub_style_folder_layout_is_found(tmp_path: Path) -> None:
    state = _tiny_state()
    (tmp_path / f"{ARCH}.augreg_in21k_ft_in1k").mkdir()
    save_file(state, str(tmp_path / f"{ARCH}.augreg_in21k_ft_in1k" / "model.safetensors"))
    _assert_backbone_equals(_build(_init("sup", file="not_here.safetensors"), tmp_path), state)


def test_mae_pretrain_tolerates_decoder_and_mask_token(tmp_path: Path) -> None:
    state = {k: v for k, v in _tiny_state().items() if k not in HEAD_KEYS}
    extras = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(32, 64),
        "decoder_pos_embed": torch.zeros(1, 17, 32),
        "decoder_blocks.0.norm1.weight": torch.zeros(32),
        "decoder_pred.weight": torch.zeros(192, 32),
    }
    torch.save({"model": {**state, **extras}}, tmp_path / "mae_pretrain_vit_base.pth")
    model = _build(_init("mae_pretrain", file="mae_pretrain_vit_base.pth"), tmp_path)
    _assert_backbone_equals(model, state)


def test_explicit_path_wins_over_weights_dir(tmp_path: Path) -> None:
    in_dir, explicit = _tiny_state(seed=1), _tiny_state(seed=2)
    torch.save(in_dir, tmp_path / "dino_vitbase16_pretrain.pth")
    other = tmp_path / "elsewhere" / "my_dino.pth"
    other.parent.mkdir()
    torch.save({"module." + k: v for k, v in explicit.items()}, other)  # DataParallel-style prefix
    model = _build(_init("dino", path=str(other)), tmp_path)
    _assert_backbone_equals(model, explicit)
    assert model.xai_weights == str(other.resolve())


def test_pos_embed_is_resampled_for_another_img_size(tmp_path: Path) -> None:
    state = _tiny_state(img_size=64)  # 8x8 grid + CLS
    torch.save(state, tmp_path / "dino_vitbase16_pretrain.pth")
    model = _build(_init("dino"), tmp_path, img_size=32)  # 4x4 grid + CLS
    assert model.pos_embed.shape == (1, 17, 64)
    expected = resample_abs_pos_embed(
        state["pos_embed"], new_size=[4, 4], old_size=[8, 8], num_prefix_tokens=1
    )
    assert torch.allclose(model.pos_embed, expected)
    assert torch.equal(model.pos_embed[:, 0], state["pos_embed"][:, 0])  # CLS position untouched
    _assert_backbone_equals(model, state, skip=("pos_embed",))


@pytest.mark.parametrize("fused", [0, 1])
def test_loading_does_not_depend_on_the_fused_attention_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fused: int
) -> None:
    state = _tiny_state()
    torch.save(state, tmp_path / "dino_vitbase16_pretrain.pth")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = _build(_init("dino"), tmp_path).eval()
    monkeypatch.setattr(timm.layers.config, "_USE_FUSED_ATTN", fused)
    model = _build(_init("dino"), tmp_path).eval()
    assert model.blocks[0].attn.fused_attn == bool(fused)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), reference.forward_features(x), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# missing files and the hub


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) every TCP connect attempt."""
    calls: list[Any] = []

    def refuse(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        calls.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


@pytest.mark.parametrize(
    ("name", "file_name", "hint"),
    [
        ("dino", "dino_vitbase16_pretrain.pth", "official DINO release"),
        ("mae", "mae_finetuned_vit_base.pth", "official MAE fine-tuned checkpoint"),
        (
            "sup",
            f"{ARCH}.augreg_in21k_ft_in1k.safetensors",
            "vit_base_patch16_224.augreg_in21k_ft_in1k",
        ),
        ("mae_pretrain", f"{ARCH}.mae.safetensors", "vit_base_patch16_224.mae"),
    ],
)
def test_missing_file_message_names_file_folder_and_override(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: list[Any],
    name: str,
    file_name: str,
    hint: str,
) -> None:
    monkeypatch.delenv(
        "HF_HUB_OFFLINE", raising=False
    )  # allow_hub=false alone must keep us offline
    weights_dir = tmp_path / "weights"
    with pytest.raises(WeightsNotFoundError) as err:
        _build(_init(name), weights_dir)
    message = str(err.value)
    assert file_name in message
    assert str(weights_dir.resolve()) in message
    assert "init.path=" in message
    assert hint in message
    assert f"init={name}" in message
    assert no_network == []


def test_missing_file_fails_before_the_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("model built before the weights were found")

    monkeypatch.setattr(timm, "create_model", boom)
    with pytest.raises(WeightsNotFoundError):
        _build(_init("dino"), tmp_path)


def test_auto_hub_offline_env_skips_the_connect(tmp_path: Path, no_network: list[Any]) -> None:
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        _build(_init("sup", allow_hub="auto"), tmp_path)  # conftest sets HF_HUB_OFFLINE=1
    assert no_network == []


def test_auto_hub_unreachable_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(WeightsNotFoundError, match="not reachable"):
        _build(_init("sup", allow_hub="auto"), tmp_path)
    assert no_network == [("huggingface.co", 443)]


def test_hub_is_used_when_allowed_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _tiny_state()
    asked: list[str] = []

    def fake_hub(hub_name: str, timm_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        asked.append(hub_name)
        return dict(state)

    monkeypatch.setattr(weights_mod, "_hub_state_dict", fake_hub)
    model = _build(_init("sup", allow_hub=True), tmp_path)
    assert asked == [f"{ARCH}.augreg_in21k_ft_in1k"]
    assert model.xai_weights == f"hf-hub:timm/{ARCH}.augreg_in21k_ft_in1k"
    _assert_backbone_equals(model, state)


def test_explicit_path_that_does_not_exist(tmp_path: Path) -> None:
    torch.save(_tiny_state(), tmp_path / "dino_vitbase16_pretrain.pth")  # no silent fallback to it
    with pytest.raises(WeightsNotFoundError, match="init.path="):
        _build(_init("dino", path=str(tmp_path / "typo.pth")), tmp_path)


# ---------------------------------------------------------------------------------------------
# unsafe and mismatching files


class SomeClass:
    """A plain Python object: unpickling it means importing and running arbitrary code."""


def _unsafe_files(tmp_path: Path) -> list[Path]:
    first, second = tmp_path / "object.pth", tmp_path / "partial.pth"
    torch.save({"x": SomeClass()}, first)
    torch.save(collections.OrderedDict(w=torch.zeros(2), f=functools.partial(print, "hi")), second)
    return [first, second]


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    for path in _unsafe_files(tmp_path):
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint_safely(path)
        assert path.name in str(err.value) and "arbitrary Python objects" in str(err.value)
        assert "refused" in str(err.value)
        with pytest.raises(UnsafeCheckpointError, match=path.name):
            _build(_init("dino", path=str(path)), tmp_path)


def test_load_checkpoint_safely_reads_plain_and_reports_missing(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 4, "name": "x"}, tmp_path / "ok.ckpt")
    ckpt = load_checkpoint_safely(tmp_path / "ok.ckpt")
    assert ckpt["epoch"] == 4 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    with pytest.raises(XaiBenchError, match="not found"):
        load_checkpoint_safely(tmp_path / "missing.ckpt")


def test_load_state_dict_file_unwraps_and_strips(tmp_path: Path) -> None:
    torch.save(
        {"state_dict": {"model.a.weight": torch.ones(1), "model.b": torch.zeros(1)}, "step": 1},
        tmp_path / "w.ckpt",
    )
    assert set(load_state_dict_file(tmp_path / "w.ckpt")) == {"a.weight", "b"}


def test_file_for_another_architecture_lists_offending_keys(tmp_path: Path) -> None:
    deeper = _tiny_state(depth=3)  # blocks.2.* are unexpected
    torch.save(deeper, tmp_path / "deep.pth")
    with pytest.raises(XaiBenchError, match="does not match the architecture") as err:
        _build(_init("dino", path=str(tmp_path / "deep.pth")))
    assert "blocks.2." in str(err.value) and "unexpected" in str(err.value)

    partial = {k: v for k, v in _tiny_state().items() if not k.startswith("blocks.1.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(XaiBenchError, match="missing") as err:
        _build(_init("dino", path=str(tmp_path / "partial.pth")))
    assert "blocks.1.attn.qkv.weight" in str(err.value)

    narrow = _tiny_state(embed_dim=32)
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(XaiBenchError, match="shape mismatch") as err:
        _build(_init("dino", path=str(tmp_path / "narrow.pth")))
    assert "cls_token" in str(err.value)


# ---------------------------------------------------------------------------------------------
# config errors


@pytest.mark.parametrize(
    ("arch", "kwargs", "match"),
    [
        ("deit_tiny_patch16_224", dict(attention="se"), "attention=se is not supported"),
        ("resnet34", dict(attention="eca"), "attention='eca'"),
        ("resnet34", dict(head="gap"), "head='gap'"),
        ("deit_tiny_patch16_224", dict(head="flatten"), "head=flatten is for CNNs"),
        ("not_a_model", {}, "not a timm architecture"),
    ],
)
def test_config_errors(arch: str, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(arch, 2, 32, **kwargs)


# ---------------------------------------------------------------------------------------------
# CNNs of the companion studies and DeiT


# (arch, attention, head): every arch and every option at least once, kept to the fast ones.
CNN_CASES = [
    ("resnet34", None, "linear"),
    ("resnet34", "se", "flatten"),
    ("resnet34", "cbam", "linear"),
    ("resnet50", None, "flatten"),
    ("resnet50", "cbam", "linear"),
    ("resnet50", "se", "linear"),
    ("vgg19", None, "flatten"),
    ("vgg19", "cbam", "linear"),
    ("densenet121", None, "linear"),
    ("densenet121", "cbam", "linear"),
    ("densenet121", "se", "flatten"),
    ("densenet121", "cbam", "flatten"),
]
EXPECTED_BLOCKS = {"resnet34": 16, "resnet50": 16, "vgg19": 5, "densenet121": 4}
ATTN_TYPES = {
    ("resnet", "se"): SEModule,
    ("resnet", "cbam"): CbamModule,
    ("own", "se"): SqueezeExcite,
    ("own", "cbam"): CBAM,
}


@pytest.mark.parametrize(("arch", "attention", "head"), CNN_CASES)
def test_cnn_builds(arch: str, attention: str | None, head: str) -> None:
    model = build_model(arch, 3, 64, init=_init("random"), attention=attention, head=head)
    x = torch.randn(2, 3, 64, 64)
    captured: list[torch.Tensor] = []
    handle = model.feature_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    handle.remove()
    assert len(captured) == 1 and captured[0].ndim == 4
    assert model.xai_arch == arch
    # feature_layer is a view onto the model, not a second copy in the state dict
    assert not any(k.startswith("feature_layer.") for k in model.state_dict())

    blocks = attention_modules(model)
    if attention is None:
        assert blocks == {}
    else:
        family = "resnet" if arch.startswith("resnet") else "own"
        kind = ATTN_TYPES[(family, attention)]
        assert len(blocks) == EXPECTED_BLOCKS[arch]
        assert all(isinstance(m, kind) for m in blocks.values())

    if head == "flatten":
        assert isinstance(model, FlattenHeadClassifier)
        _, c, h, w = captured[0].shape
        assert model.fc.in_features == c * h * w and model.get_classifier() is model.fc
        assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    else:
        assert model.get_classifier().out_features == 3


def test_attention_sizes_use_reduction_16() -> None:
    model = build_model("densenet121", 2, 64, attention="se")
    blocks = list(attention_modules(model).values())
    assert [b.channels for b in blocks] == [256, 512, 1024, 1024]
    assert all(b.fc1.out_channels == b.channels // 16 for b in blocks)
    names = [n for n, _ in model.features.named_children()]
    assert names.index("denseblock1_se") == names.index("denseblock1") + 1


def test_cnn_pretrained_file_loads_and_attention_starts_fresh(tmp_path: Path) -> None:
    # ImageNet file of the plain architecture into its SE variant, with the flatten head.
    plain = _randomised(timm.create_model("resnet18", num_classes=1000))
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    save_file(state, str(tmp_path / "resnet18.a1_in1k.safetensors"))
    init = _init("sup", hub_tag="a1_in1k", file="resnet18.a1_in1k.safetensors")
    model = build_model(
        "resnet18", 2, 64, init=init, weights_dir=str(tmp_path), attention="se", head="flatten"
    )
    own = model.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert len(attention_modules(model)) == 8
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_deit_tiny_builds() -> None:
    model = build_model("deit_tiny_patch16_224", 2, 32, init=_init("random"))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    assert model.get_classifier().out_features == 2 and model.feature_layer is None


def test_hydra_model_config_loads_a_written_dino_file(tmp_path: Path, compose_cfg) -> None:
    """The real conf/model + conf/init groups go through hydra.utils.instantiate."""
    import hydra

    cfg = compose_cfg(
        "model=vit_test", "init=dino", f"paths.weights_dir={tmp_path}", "dataset.img_size=32"
    )
    model_cfg = cfg.model
    kwargs = {k: model_cfg[k] for k in ("patch_size", "depth", "embed_dim", "num_heads")}
    model = timm.create_model(ARCH, num_classes=1000, img_size=32, **kwargs)
    state = {k: v.clone() for k, v in _randomised(model).state_dict().items()}
    torch.save(state, tmp_path / "dino_vitbase16_pretrain.pth")
    built = hydra.utils.instantiate(model_cfg)
    assert built.xai_init == "dino"
    _assert_backbone_equals(built, state)
