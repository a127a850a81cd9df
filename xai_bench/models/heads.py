"""Classifier heads for CNNs and the feature layer that CAM methods hook.

The Grad-CAM vs HiResCAM faithfulness study: HiResCAM is provably faithful (and differs from
Grad-CAM) only when the explained conv map goes through Flatten -> Linear with no global average
pooling; `FlattenHeadClassifier` builds exactly that on top of any timm CNN backbone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xai_bench.utils.errors import ConfigError


def find_feature_layer(
    backbone: nn.Module, img_size: int, in_chans: int = 3
) -> tuple[str, nn.Module, torch.Size] | None:
    """The module whose output is `forward_features`' final map, and that map's shape.

    Found by one dummy forward (batch 1, eval mode, no grad) rather than per-architecture
    names, so any timm CNN works. Among modules returning that very tensor, the last one to
    finish is the outermost (e.g. `layer4`, not its last ReLU), so hooks on it see the value
    after every in-place op. None when the features are not a 4-D map (transformers).
    """
    calls: list[tuple[str, Any]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: calls.append((name, out)))
        for name, module in backbone.named_modules()
        if name
    ]
    param = next(backbone.parameters(), None)
    x = torch.zeros(
        1,
        in_chans,
        img_size,
        img_size,
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    was_training = backbone.training
    try:
        backbone.eval()  # no BatchNorm statistics change, no dropout
        with torch.no_grad():
            feats = backbone.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4:
        return None
    matches = [name for name, out in calls if out is feats]
    if not matches:
        return None
    name = matches[-1]
    return name, backbone.get_submodule(name), feats.shape


def set_feature_layer(model: nn.Module, layer: nn.Module | None, name: str | None) -> None:
    """Expose `model.feature_layer` without registering it twice.

    A plain `model.feature_layer = layer` would register the module under a second name and
    duplicate its weights in every state dict and checkpoint.
    """
    object.__setattr__(model, "feature_layer", layer)
    model.feature_layer_name = name


class FlattenHeadClassifier(nn.Module):
    """timm CNN backbone -> final conv map (B, C, h, w) -> Flatten -> one Linear
    (the Grad-CAM vs HiResCAM faithfulness study)."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, img_size: int, in_chans: int = 3
    ) -> None:
        super().__init__()
        if hasattr(backbone, "patch_embed"):
            raise ConfigError("head=flatten needs a CNN; transformers keep head=linear.")
        backbone.reset_classifier(0, global_pool="")
        # forward_features stops before pre_logits (VGG's conv MLP): drop those dead weights so
        # they are neither trained nor reported unused by DDP.
        if any(True for _ in getattr(backbone, "pre_logits", nn.Identity()).parameters()):
            backbone.pre_logits = nn.Identity()
        found = find_feature_layer(backbone, img_size, in_chans)
        if found is None:
            raise ConfigError(
                f"head=flatten needs a backbone whose features are a (B, C, h, w) map; "
                f"{type(backbone).__name__} does not give one."
            )
        name, layer, shape = found
        channels, height, width = (int(s) for s in shape[1:])
        self.backbone = backbone
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels * height * width, num_classes)
        self.num_classes = num_classes
        self.feature_shape = (channels, height, width)
        set_feature_layer(self, layer, f"backbone.{name}")

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm config (input size, mean/std) for data transforms."""
        return dict(getattr(self.backbone, "pretrained_cfg", {}) or {})

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
