"""The tiny models the method tests share, float64 and seeded, so that oracle comparisons are
exact to float tolerance: a two-conv CNN with nn.ReLU modules and no max pool (the rules of
guided backprop, DeepLIFT and LRP see each ReLU as a module), and a depth-2 timm ViT at 32 px."""

from __future__ import annotations

import torch
from torch import nn

from xai_bench.models import build_model


class TinyCNN(nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> average pool -> flatten -> Linear (no max pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.r2(self.c2(self.r1(self.c1(x))))).flatten(1))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny_patch16_224", 2, 32, patch_size=8, depth=2, embed_dim=32,
                       num_heads=2).double().eval()
