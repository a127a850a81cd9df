"""Score-CAM and Ablation-CAM: channel weights from forwards of perturbed copies, batched.

Both take the layer's activations A (B, C, h, w) from one forward (which also resolves the
target), then run one forward per (image, channel): B*C perturbed copies, `batch_size` copies
per forward across images and channels. Their cost, 1 + C forwards per image, is their floor.
  scorecam     mask_c = minmax(bilinear_upsample(A_c)) (eps 1e-8); s_c = logit_t(x * mask_c);
               w = softmax_c(s)                                   (Wang et al. 2020)
  ablationcam  y_c = logit_t with channel c of the layer's output replaced by the ablation
               value; w_c = (y - y_c) / y                         (Desai & Ramaswamy 2020)
cam = sum_c w_c A_c (or its eigen projection), then cam.py's post-processing.

Where pytorch-grad-cam 1.5.7 differs (docs/methods.md):
- Score-CAM upsamples the activations with align_corners=True (nn.UpsamplingBilinear2d), unlike
  its own cv2 map resize; `mask_align_corners` (default true) follows it. It weights by the
  softmax over channels of the target LOGITS (the authors' code used softmax probabilities as
  the weights directly); we follow the library. It runs each image's masks separately, 16 a
  forward.
- Ablation-CAM ablates to 0 when the image's layer output has minimum exactly 0 (a ReLU map),
  otherwise to min - 1e7 - and re-reads the minimum after each row of its batch, so the k-th
  channel of a batch gets min - k * 1e7: maps depend on its `batch_size` (32) unless the
  minimum is 0. `ablation_value`: zero (the paper, default) | library (its rule, without the
  drift: equal to the library with batch_size=1). On a ViT the whole channel is ablated, prefix
  tokens included, as the library's AblationLayerVit does; it also runs a second unperturbed
  forward, and ablates one image at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_bench.explain.base import Passes, compute_dtype, model_state, register_method
from xai_bench.explain.cam import CAM, _as_map, eigen_projection, layer_output, resolve_layer
from xai_bench.utils.errors import ConfigError

SCORE_MASK_EPS = 1e-8  # pytorch-grad-cam's, in the per-mask min-max
LIBRARY_ABLATION_OFFSET = 1e7  # pytorch-grad-cam's: min - 1e7 where the minimum is not 0
ABLATION_VALUES = ("zero", "library")


def layer_channels(model: nn.Module, layer: str | nn.Module | None, height: int,
                   width: int) -> int:
    """Channels of the CAM layer's output for height x width images, from a one-image shape
    probe through `model.forward` (not `model(...)`: the probe is not one of the method's
    passes, and hooks counting them on the model do not see it)."""
    module = resolve_layer(model, layer)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    in_chans = convs[0].in_channels if convs else 3
    param = next(model.parameters(), None)
    probe = torch.zeros(1, in_chans, height, width, dtype=compute_dtype(model),
                        device=param.device if param is not None else None)
    shapes: list[torch.Size] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        shapes.append((out[0] if isinstance(out, tuple) else out).shape)

    handle = module.register_forward_hook(hook)
    try:
        with model_state(model), torch.no_grad():
            model.forward(probe)
    finally:
        handle.remove()
    return int(shapes[0][1] if len(shapes[0]) == 4 else shapes[0][-1])


class PerturbationCAM(CAM):
    """Channel weights from B*C forwards of perturbed copies, `batch_size` copies a forward."""

    uses_gradients = False
    needs_grad = False

    def __init__(self, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
        self.batch_size = batch_size

    def channels(self, model: nn.Module, height: int, width: int) -> int:
        """C, the layer's channels: the perturbed copies of each image (the catalogue's C)."""
        return layer_channels(model, self.layer, height, width)

    def core_passes(self, model: nn.Module, height: int, width: int) -> Passes:
        """One forward for the activations and the target, one per channel of the layer."""
        return Passes(forwards=1 + self.channels(model, height, width))

    def channel_scores(self, model: nn.Module, images: torch.Tensor, out: torch.Tensor,
                       acts: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        """The model's logits on the perturbed copies for the flat (image, channel) indices
        `picks` (image = pick // C, channel = pick % C)."""
        raise NotImplementedError

    def channel_weights(self, scores: torch.Tensor, logits: torch.Tensor,
                        target: torch.Tensor) -> torch.Tensor:
        """(B, C) target scores of the perturbed copies -> (B, C) channel weights."""
        raise NotImplementedError

    def _cams(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out, logits = layer_output(model, images, self.layer)
            acts = _as_map(out, model)
            batch, channels = acts.shape[:2]
            scores = acts.new_empty(batch * channels)
            for start in range(0, batch * channels, self.batch_size):
                picks = torch.arange(start, min(start + self.batch_size, batch * channels),
                                     device=acts.device)
                chunk_logits = self.channel_scores(model, images, out, acts, picks)
                scores[picks] = chunk_logits.gather(
                    1, target[picks // channels].view(-1, 1))[:, 0].to(scores.dtype)
            weights = self.channel_weights(scores.view(batch, channels), logits, target)
            weighted = weights[:, :, None, None] * acts
            if self.eigen_smooth:
                return eigen_projection(weighted, self.eigen_sign)
            return weighted.sum(dim=1)


@register_method("scorecam")
class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al. 2020): each channel's upsampled, min-max scaled activation masks
    the image; the softmax over channels of the masked images' target logits weights it."""

    mode = "scorecam"

    def __init__(self, mask_align_corners: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_align_corners = bool(mask_align_corners)

    def channel_scores(self, model: nn.Module, images: torch.Tensor, out: torch.Tensor,
                       acts: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        channels = acts.shape[1]
        chosen = acts.flatten(0, 1)[picks].unsqueeze(1)  # (n, 1, h, w)
        masks = F.interpolate(chosen, size=tuple(images.shape[-2:]), mode="bilinear",
                              align_corners=self.mask_align_corners)
        lo = masks.amin(dim=(2, 3), keepdim=True)
        hi = masks.amax(dim=(2, 3), keepdim=True)
        masks = (masks - lo) / (hi - lo + SCORE_MASK_EPS)
        return model(images[picks // channels] * masks)

    def channel_weights(self, scores: torch.Tensor, logits: torch.Tensor,
                        target: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=1)


@register_method("ablationcam")
class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): each channel's weight is the relative drop of the
    target logit when that channel of the layer's output is ablated."""

    mode = "ablationcam"

    def __init__(self, ablation_value: str = "zero", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ablation_value not in ABLATION_VALUES:
            raise ConfigError(
                f"ablation_value must be one of {ABLATION_VALUES}; got {ablation_value!r}.")
        self.ablation_value = ablation_value

    def _values(self, out: torch.Tensor) -> torch.Tensor:
        """(B,) the value an ablated channel of each image's layer output is set to."""
        if self.ablation_value == "zero":
            return out.new_zeros(out.shape[0])
        low = out.flatten(1).amin(dim=1)
        return torch.where(low == 0, low, low - LIBRARY_ABLATION_OFFSET)

    def channel_scores(self, model: nn.Module, images: torch.Tensor, out: torch.Tensor,
                       acts: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        channels = acts.shape[1]
        rows, chans = picks // channels, picks % channels
        # channel axis of the raw output: 1 for (B, C, h, w) maps, last for ViT (B, N, C) tokens
        hit = F.one_hot(chans, channels).bool()
        hit = hit[:, :, None, None] if out.dim() == 4 else hit[:, None, :]
        fill = self._values(out)[rows].view(-1, *([1] * (out.dim() - 1)))
        ablated = torch.where(hit, fill, out[rows])

        def replace(_m: nn.Module, _inp: Any, output: Any) -> Any:
            return (ablated, *output[1:]) if isinstance(output, tuple) else ablated

        handle = resolve_layer(model, self.layer).register_forward_hook(replace)
        try:
            return model(images[rows])
        finally:
            handle.remove()

    def channel_weights(self, scores: torch.Tensor, logits: torch.Tensor,
                        target: torch.Tensor) -> torch.Tensor:
        original = logits.gather(1, target.view(-1, 1)).to(scores.dtype)
        return (original - scores) / original
