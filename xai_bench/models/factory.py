"""`build_model`: the `_target_` of the `model/` config group
(ViTs, DeiT and the companion CNNs)."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from xai_bench.models.attention import REDUCTION, attention_modules, make_attention
from xai_bench.models.heads import FlattenHeadClassifier, find_feature_layer, set_feature_layer
from xai_bench.models.weights import InitSpec, load_weights_into, resolve_weights
from xai_bench.utils.errors import ConfigError

log = logging.getLogger(__name__)

HEADS = ("linear", "flatten")
ATTENTIONS = ("se", "cbam")

# How SE/CBAM enter each timm model family (timm module name -> placement). timm ResNets take
# timm's own blocks through block_args; DenseNet and VGG get ours inserted into `features`.
ATTENTION_PLACEMENT: dict[str, str] = {
    "resnet": "block_args",
    "densenet": "after_dense_blocks",
    "vgg": "before_max_pools",
}
_DENSE_BLOCK = re.compile(r"denseblock\d+")


def _plain(value: Any) -> Any:
    # Hydra passes nested timm kwargs (e.g. block_args) as DictConfig; timm expects dicts.
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    if value not in allowed:
        raise ConfigError(
            f"model.{what}={value!r} is not supported; use one of {', '.join(allowed)}."
        )
    return value


def attention_placement(arch: str) -> str | None:
    """Which insertion rule applies to `arch`, or None when SE/CBAM are unsupported for it."""
    for family, placement in ATTENTION_PLACEMENT.items():
        if timm.models.is_model_in_modules(arch, [family]):
            return placement
    return None


def _create_timm(arch: str, num_classes: int, img_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model, with img_size only where the architecture takes it (ViT family)."""
    base = dict(pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(arch, img_size=img_size, **base)
    except TypeError as err:
        if "img_size" not in str(err):
            raise ConfigError(
                f"model.arch={arch} does not accept the timm kwargs {sorted(kwargs)}: {err}"
            ) from err
    try:
        return timm.create_model(arch, **base)
    except TypeError as err:
        raise ConfigError(
            f"model.arch={arch} does not accept the timm kwargs {sorted(kwargs)}: {err}"
        ) from err


def _insert_into_features(model: nn.Module, kind: str, placement: str, in_chans: int) -> None:
    """Rebuild `model.features` with SE/CBAM blocks, keeping every original module name.

    Original names are kept so ImageNet files for the plain architecture still load.
    """
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError(
            f"attention={kind} needs a `features` Sequential in {type(model).__name__}."
        )
    if placement == "after_dense_blocks":
        anchors = [n for n, _ in features.named_children() if _DENSE_BLOCK.fullmatch(n)]
    else:
        anchors = [n for n, m in features.named_children() if isinstance(m, nn.MaxPool2d)]
    channels = _probe_channels(features, anchors, in_chans)
    items: list[tuple[str, nn.Module]] = []
    stage = 0
    for name, module in features.named_children():
        if name in anchors and placement == "before_max_pools":
            stage += 1
            items.append((f"stage{stage}_{kind}", make_attention(kind, channels[name], REDUCTION)))
        items.append((name, module))
        if name in anchors and placement == "after_dense_blocks":
            items.append((f"{name}_{kind}", make_attention(kind, channels[name], REDUCTION)))
    model.features = nn.Sequential(OrderedDict(items))


def _probe_channels(features: nn.Sequential, names: list[str], in_chans: int) -> dict[str, int]:
    """Output channels of the named children, from one small forward (no per-arch arithmetic)."""
    found: dict[str, int] = {}
    handles = [
        features.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, name=n: found.__setitem__(name, int(out.shape[1]))
        )
        for n in names
    ]
    was_training = features.training
    try:
        features.eval()
        with torch.no_grad():
            features(torch.zeros(1, in_chans, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
        features.train(was_training)
    return found


def build_model(
    arch: str,
    num_classes: int,
    img_size: int,
    init: Mapping[str, Any] | None = None,
    weights_dir: str | None = None,
    head: str = "linear",
    attention: str | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm classifier with `num_classes` outputs, initialised as `init` says.

    Weights are resolved before the model is built (path -> weights_dir -> hub -> clear error),
    so a missing file fails in seconds. The classifier head is always fresh. The returned
    model carries `xai_arch`, `xai_init`, `xai_weights` (for logging) and, for CNNs,
    `feature_layer` (the module whose output is the final (B, C, h, w) map).

    Args:
        arch: A timm architecture name (`timm.list_models()`, or one registered with timm's
            `register_model`).
        num_classes: Outputs of the fresh classifier head.
        img_size: Input size (ViTs are built for it; CNNs use it to find `feature_layer`).
        init: The `init/` config (name, file, hub_tag, path, key_map, allow_hub); None =
            random weights.
        weights_dir: Where weight files are looked up by name (`paths.weights_dir`).
        head: "linear" (timm's) or "flatten" (Conv -> Flatten -> Linear, CNNs only).
        attention: None, "se" or "cbam" blocks inserted into a ResNet, DenseNet or VGG.
        **timm_kwargs: Passed to `timm.create_model` (e.g. `depth`, `patch_size`).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: An unknown architecture, an unsupported head / attention, or weights
            that do not fit the architecture.
        WeightsNotFoundError: The weight file `init` names is not there.
    """
    spec = InitSpec.from_config(init)
    head_kind = _check_choice(head, HEADS, "head") or "linear"
    attn = _check_choice(attention, ATTENTIONS, "attention")
    timm_kwargs = {k: _plain(v) for k, v in timm_kwargs.items()}
    if "pretrained" in timm_kwargs:
        raise ConfigError(
            "model.pretrained is not a model setting: choose the weights with init=..."
        )
    if not timm.is_model(arch):
        raise ConfigError(f"model.arch={arch} is not a timm architecture (see timm.list_models()).")
    placement = attention_placement(arch) if attn else None
    if attn and placement is None:
        raise ConfigError(
            f"attention={attn} is not supported for model.arch={arch}; it is available for timm "
            f"{', '.join(ATTENTION_PLACEMENT)} models (e.g. resnet50, densenet121, vgg19)."
        )

    source = resolve_weights(spec, arch, weights_dir)

    build_kwargs = dict(timm_kwargs)
    if placement == "block_args":
        build_kwargs["block_args"] = {**(build_kwargs.get("block_args") or {}), "attn_layer": attn}
    model = _create_timm(arch, num_classes, img_size, build_kwargs)
    is_transformer = hasattr(model, "patch_embed")
    if head_kind == "flatten" and is_transformer:
        raise ConfigError(
            "head=flatten is for CNNs (the Grad-CAM vs HiResCAM faithfulness study); "
            f"model.arch={arch} is a transformer: use head=linear."
        )
    in_chans = int(timm_kwargs.get("in_chans", 3))
    if attn and placement != "block_args":
        _insert_into_features(model, attn, str(placement), in_chans)
    model.xai_arch = arch

    if source is not None:
        load_weights_into(
            model,
            source.read(timm_kwargs),
            key_map=spec.key_map,
            source=f"the weights {source.describe()} (init={spec.name})",
            fresh_prefixes=list(attention_modules(model)),
        )

    if head_kind == "flatten":
        model = FlattenHeadClassifier(model, num_classes, img_size, in_chans)
    elif is_transformer:
        set_feature_layer(model, None, None)
    else:
        found = find_feature_layer(model, img_size, in_chans)
        set_feature_layer(model, found[1] if found else None, found[0] if found else None)
    model.xai_arch = arch
    model.xai_init = spec.name
    model.xai_weights = source.describe() if source is not None else None
    log.info(
        "built %s (init=%s, head=%s, attention=%s, weights=%s)",
        arch,
        spec.name,
        head_kind,
        attn,
        model.xai_weights,
    )
    return model
