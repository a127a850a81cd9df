"""Channel / spatial attention blocks of the attention-mechanisms survey (IEEE Access 2022):
SE and CBAM, reduction 16.

timm ResNets get timm's own SEModule / CbamModule through `block_args`; DenseNet and VGG have no
such hook, so these small modules are inserted into their `features` instead.
"""

from __future__ import annotations

import torch
from timm.layers.cbam import CbamModule
from timm.layers.squeeze_excite import SEModule
from torch import nn

from xai_bench.utils.errors import ConfigError

REDUCTION = 16


def _hidden(channels: int, reduction: int) -> int:
    # Early VGG stages have 64 channels: 64 // 16 = 4 is still a valid bottleneck, 0 is not.
    return max(channels // reduction, 1)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): rescales channels by a gate computed from their means."""

    def __init__(self, channels: int, reduction: int = REDUCTION) -> None:
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al.): a channel gate, then a 7x7 spatial gate."""

    def __init__(self, channels: int, reduction: int = REDUCTION, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.channels = channels
        self.reduction = reduction
        # One MLP shared by the average- and max-pooled descriptors, as in the paper.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        x = x * torch.sigmoid(avg + mx)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


# Our modules and timm's equivalents per kind: the loader treats all of them as "added" blocks.
ATTENTION_MODULE_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "se": (SqueezeExcite, SEModule),
    "cbam": (CBAM, CbamModule),
}
_OWN_MODULES: dict[str, type[nn.Module]] = {"se": SqueezeExcite, "cbam": CBAM}


def make_attention(kind: str, channels: int, reduction: int = REDUCTION) -> nn.Module:
    """One attention block of `kind` ("se" | "cbam") for a `channels`-channel feature map."""
    if kind not in _OWN_MODULES:
        raise ConfigError(f"attention={kind!r} is not supported; use one of null, se, cbam.")
    return _OWN_MODULES[kind](channels, reduction)


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> module for every SE/CBAM block (ours or timm's) inside `model`."""
    kinds = tuple(t for types in ATTENTION_MODULE_TYPES.values() for t in types)
    return {name: m for name, m in model.named_modules() if name and isinstance(m, kinds)}
