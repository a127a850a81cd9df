"""Interpretability-map throughput: xai_bench vs the peer library, same model and inputs.

    python scripts/bench_explain.py                          # vit_tiny 224 px, 16 images, CPU
    python scripts/bench_explain.py --model vit_b16          # ViT-B/16 (use a GPU)
    python scripts/bench_explain.py --methods gradcam,integrated_gradients --batch 8

For every method: maps/s of xai_bench and of its peer (captum, pytorch-grad-cam, or lxt on a
torchvision copy of the model for attnlrp / cp_lrp; "-" where no pip library implements the
method), and the ratio of xai_bench's time to its floor, the cost of
the model passes the method declares (`method.passes`: F forwards and B backwards per image, the
target's forward included; docs/methods.md's catalogue): F x the forward floor (one no-grad
forward of the batch) + B x the backward part (the forward+backward floor, a forward and a
backward to the input gradient with weights frozen, minus the forward floor). A method that
declares 1 F + 1 B is measured against one forward+backward, (1 + n_steps) F + n_steps B
(Integrated Gradients) against a forward and n_steps forward+backwards, perturbation methods
against their forwards at the forward floor's throughput. By default every registered method that
explains ViTs runs. Peak memory (GPU: allocator peak; CPU: process peak RSS) is shown for
the memory-bound Integrated Gradients.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import device_label, pick_device, timeit
from bench_lxt import VARIANTS as LXT_PEERS
from bench_lxt import lxt_peers
from rich.console import Console
from rich.table import Table

from xai_bench.explain import METHODS, build_method
from xai_bench.explain.feature_masks import patch_mask, patch_size_for
from xai_bench.explain.vit_geometry import is_vit, token_grid

MODELS = {
    "vit_tiny": dict(arch="vit_tiny_patch16_224", img=224, kwargs={}),
    "vit_b16": dict(arch="vit_base_patch16_224", img=224, kwargs={}),
    "vit_test": dict(arch="vit_tiny_patch16_224", img=32,
                     kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)),
    # CNNs: the methods that explain CNNs (deeplift, lrp, ...) against captum / zennit
    "resnet18": dict(arch="resnet18", img=224, kwargs={}),
    "resnet_test": dict(arch="resnet18", img=32, kwargs={}),
}
IG_STEPS = 50
# settings of the sampling / perturbation rows and their peers (10 samples;
# occlusion: 4 x 4 windows of a quarter of the image side + the clean forward)
BENCH_SETTINGS = {
    "smoothgrad": {"samples": 10}, "smoothgrad_sq": {"samples": 10}, "vargrad": {"samples": 10},
    "gradient_shap": {"samples": 10, "n_baselines": 8},
    "occlusion": {"batch_size": 64},
    "ablationcam": {"ablation_value": "library"},  # the peer's ablation value (same cost)
    # 64 masks / samples, 64 perturbed images per forward (the peers': 64 per forward too)
    "rise": {"n_masks": 64, "batch_size": 64},
    "lime": {"samples": 64, "batch_size": 64}, "kernel_shap": {"samples": 64, "batch_size": 64},
    "lrp": {"composite": "epsilon_plus_flat"},  # the peer: zennit's EpsilonPlusFlat
    # 8 uniform baselines (the default), 16 references per pass: on the CPU a pass of 32 ResNet
    # images of 224 px (100 MB activations) runs ~10 % slower per image than the floor's batch
    "deeplift_shap": {"batch_size": 16},
}
# rows whose peer is pytorch-grad-cam (its class, on blocks[-1].norm1, prefix tokens dropped)
GRAD_CAM_PEERS = {"gradcam": "GradCAM", "hirescam": "HiResCAM",
                  "gradcam_plusplus": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
                  "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
                  "scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
PERTURBED_PER_FORWARD = 64  # Score-CAM / Ablation-CAM copies per forward, ours and the peer's


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Memory the call adds at its peak: GPU allocator peak, or the process's peak RSS growth."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    base = _proc_status_mb("VmRSS")
    fn()
    return _proc_status_mb("VmHWM") - base


def captum_ig(model: torch.nn.Module) -> Callable[..., object]:
    """captum IntegratedGradients, IG_STEPS steps, `chunk` interpolated images per pass (None:
    captum's default, every step of every image in one pass)."""
    from captum.attr import IntegratedGradients

    def run(x: torch.Tensor, t: torch.Tensor, chunk: int | None = None) -> object:
        return IntegratedGradients(model).attribute(x, target=t, n_steps=IG_STEPS,
                                                    internal_batch_size=chunk)
    return run


def peers(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """The peer library call for each method, with the same targets."""
    import pytorch_grad_cam
    from captum.attr import (
        GradientShap,
        GuidedBackprop,
        InputXGradient,
        KernelShap,
        Lime,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prefix, gh, gw = token_grid(model)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    def cam(name: str) -> Callable[[torch.Tensor, torch.Tensor], object]:
        cls = getattr(pytorch_grad_cam, GRAD_CAM_PEERS[name])
        extra = ({"ablation_layer": AblationLayerVit(), "batch_size": PERTURBED_PER_FORWARD}
                 if name == "ablationcam" else {})

        def run(x: torch.Tensor, t: torch.Tensor) -> object:
            with cls(model=model, target_layers=[model.blocks[-1].norm1],
                     reshape_transform=reshape, **extra) as c:
                c.batch_size = PERTURBED_PER_FORWARD  # Score-CAM reads it (default 16)
                return c(input_tensor=x.requires_grad_(),
                         targets=[ClassifierOutputTarget(int(i)) for i in t])
        return run

    def tunnel(nt_type: str) -> Callable[[torch.Tensor, torch.Tensor], object]:
        def run(x: torch.Tensor, t: torch.Tensor) -> object:  # ~32 noisy images per pass, as ours
            return NoiseTunnel(Saliency(model)).attribute(
                x, nt_type=nt_type, nt_samples=10, nt_samples_batch_size=max(1, 32 // len(x)),
                stdevs=0.5, target=t, abs=False)
        return run

    def gradient_shap(x: torch.Tensor, t: torch.Tensor) -> object:
        lo, hi = float(x.min()), float(x.max())
        refs = lo + (hi - lo) * torch.rand(8, *x.shape[1:], device=x.device)
        return GradientShap(model).attribute(x, baselines=refs, n_samples=10, target=t)

    def occlusion(x: torch.Tensor, t: torch.Tensor) -> object:  # 64 occluded images per pass
        side = x.shape[-1] // 4
        return Occlusion(model).attribute(
            x, sliding_window_shapes=(3, side, side), strides=(3, side, side), baselines=0.0,
            target=t, perturbations_per_eval=max(1, 64 // len(x)))

    def surrogate(cls: type) -> Callable[[torch.Tensor, torch.Tensor], object]:
        """captum Lime / KernelShap on the ViT's patch grid, least squares as ours; captum fits
        one image at a time (64 perturbed copies of it per forward)."""
        from captum._utils.models.linear_model import SkLearnLinearRegression

        def run(x: torch.Tensor, t: torch.Tensor) -> object:
            mask = patch_mask(len(x), x.shape[-2], x.shape[-1], patch_size_for(model, None),
                              x.device)[0].unsqueeze(1)
            explainer = (Lime(model, interpretable_model=SkLearnLinearRegression())
                         if cls is Lime else KernelShap(model))
            return explainer.attribute(x, target=t, feature_mask=mask, n_samples=64,
                                       perturbations_per_eval=64)
        return run

    return {
        "lime": surrogate(Lime), "kernel_shap": surrogate(KernelShap),
        "smoothgrad": tunnel("smoothgrad"), "smoothgrad_sq": tunnel("smoothgrad_sq"),
        "vargrad": tunnel("vargrad"), "gradient_shap": gradient_shap, "occlusion": occlusion,
        **{name: cam(name) for name in GRAD_CAM_PEERS},
        "saliency": lambda x, t: Saliency(model).attribute(x.requires_grad_(), target=t, abs=True),
        "input_x_gradient": lambda x, t: InputXGradient(model).attribute(x.requires_grad_(),
                                                                         target=t),
        "guided_backprop": lambda x, t: GuidedBackprop(model).attribute(x.requires_grad_(),
                                                                       target=t),
        "integrated_gradients": captum_ig(model),
        **lxt_peers(model),  # attnlrp, cp_lrp: lxt on a torchvision copy of the model
    }


def cnn_peers(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """The peers of the CNN rows: captum DeepLift (zero baseline), DeepLiftShap (our baselines),
    Saliency and IntegratedGradients; zennit's EpsilonPlusFlat with its batch-norm canonizer
    (timm's residual sums stay functional: zennit copies relevance there instead of splitting
    it; the cost is the same); pytorch-grad-cam's GradCAM on our layer and FullGrad."""
    import pytorch_grad_cam
    from captum.attr import DeepLift, DeepLiftShap, Saliency
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    from xai_bench.explain.cam import resolve_layer
    from xai_bench.explain.gradients import not_inplace

    def deeplift(x: torch.Tensor, t: torch.Tensor) -> object:
        with not_inplace(model):  # captum's hooks cannot take timm's in-place ReLUs
            return DeepLift(model).attribute(x.requires_grad_(), baselines=torch.zeros_like(x),
                                             target=t)

    class PerImageBaselines(DeepLiftShap):
        """captum's DeepLiftShap with each image's own baselines (ours: (B, n, C, H, W)) in
        place of one set shared by the batch; the same expansion, passes and averaging."""

        bases: torch.Tensor

        def _expand_inputs_baselines_targets(self, baselines: tuple, inputs: tuple,
                                             target: object, extra: object) -> tuple:
            exp_inp, _, exp_tgt, exp_extra = super()._expand_inputs_baselines_targets(
                baselines, inputs, target, extra)
            return exp_inp, (self.bases.flatten(0, 1).requires_grad_(),), exp_tgt, exp_extra

    def deeplift_shap(x: torch.Tensor, t: torch.Tensor) -> object:
        ours = build_method("deeplift_shap", **BENCH_SETTINGS.get("deeplift_shap", {}))
        explainer = PerImageBaselines(model)
        explainer.bases = ours.baseline_images(x)
        with not_inplace(model):
            return explainer.attribute(x.requires_grad_(), baselines=explainer.bases[0],
                                       target=t)

    def lrp(x: torch.Tensor, t: torch.Tensor) -> object:
        x = x.requires_grad_()
        with EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]).context(model) as zmodel:
            out = zmodel(x)
            start = torch.nn.functional.one_hot(t, out.shape[1]).to(out) * out.detach()
            return torch.autograd.grad(out, x, grad_outputs=start)[0]

    def grad_cam(cls: str, layers: list[torch.nn.Module]) -> Callable[..., object]:
        def run(x: torch.Tensor, t: torch.Tensor) -> object:
            with getattr(pytorch_grad_cam, cls)(model=model, target_layers=layers) as c:
                return c(input_tensor=x.requires_grad_(),
                         targets=[ClassifierOutputTarget(int(i)) for i in t])
        return run

    return {"deeplift": deeplift, "deeplift_shap": deeplift_shap, "lrp": lrp,
            "gradcam": grad_cam("GradCAM", [resolve_layer(model, None)]),  # ours: feature_layer
            "fullgrad": grad_cam("FullGrad", []),  # it finds its own conv / BatchNorm layers
            "saliency": lambda x, t: Saliency(model).attribute(x.requires_grad_(), target=t,
                                                                abs=True),
            "integrated_gradients": captum_ig(model)}


# the peer column of rows whose peer is not what the row's name implies (default: captum;
# the CAM rows grad-cam; attnlrp / cp_lrp lxt)
PEER_NAMES = {"lrp": "zennit", "fullgrad": "grad-cam"}


def peer_name(name: str) -> str:
    if name in PEER_NAMES:
        return PEER_NAMES[name]
    if name in GRAD_CAM_PEERS:
        return "grad-cam"
    return "lxt" if name in LXT_PEERS else "captum"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=None,
                        help="default: every registered method that explains the model's kind")
    parser.add_argument("--ig-internal-batch", type=int, default=16,
                        help="interpolated images per pass")
    parser.add_argument("--ig-batch", type=int, default=4, help="images for the IG memory table")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--ig-memory-child", choices=["ours", "captum"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    device = pick_device(args.device)
    from xai_bench.models import build_model

    spec = MODELS[args.model]
    model = build_model(spec["arch"], 2, spec["img"], **spec["kwargs"]).to(device).eval()
    kind = "vit" if is_vit(model) else "cnn"
    if args.methods is None:
        args.methods = ",".join(n for n, c in METHODS.items() if kind in c.models)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, spec["img"], spec["img"], generator=g).to(device)
    with torch.no_grad():
        target = model(x).argmax(-1)
    bs = args.batch
    if args.ig_memory_child:
        for p in model.parameters():
            p.requires_grad_(False)
        ig_memory_child(model, x, target, args.ig_internal_batch, args.ig_memory_child)
        return

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    for p in model.parameters():  # attribution needs input gradients only: no weight gradients
        p.requires_grad_(False)

    def fwd_bwd() -> None:
        xi = x.clone().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)

    floors = {"forward": timeit(fwd, device, args.repeats),
              "forward+backward": timeit(fwd_bwd, device, args.repeats)}
    peer_calls = peers(model) if kind == "vit" else cnn_peers(model)
    ig_chunk = args.ig_internal_batch
    table = Table(title=f"{spec['arch']} {spec['img']}px, {bs} images, {device_label(device)}")
    for col in ("method", "xai_bench maps/s", "peer", "peer maps/s", "speed-up", "floor",
                "x floor"):
        table.add_column(col, justify="right")
    table.add_row("forward floor", f"{bs / floors['forward']:.1f}", "", "", "", "", "")
    table.add_row("forward+backward floor", f"{bs / floors['forward+backward']:.1f}",
                  "", "", "", "", "")

    for name in [m for m in args.methods.split(",") if m]:
        kwargs = ({"n_steps": IG_STEPS, "internal_batch_size": ig_chunk}
                  if name == "integrated_gradients" else dict(BENCH_SETTINGS.get(name, {})))
        if name == "occlusion":
            kwargs.update(window=spec["img"] // 4, stride=spec["img"] // 4)
        method = build_method(name, **kwargs)
        ours_t = timeit(lambda m=method: m(model, x, target=target), device, args.repeats)
        passes = method.passes(model, spec["img"], spec["img"])
        floor_t = (floors["forward"] * passes.forwards
                   + (floors["forward+backward"] - floors["forward"]) * passes.backwards)
        peer = peer_calls.get(name)
        if name == "integrated_gradients" and peer:
            peer_t = timeit(lambda p=peer: p(x.clone(), target, ig_chunk), device, args.repeats)
        else:
            peer_t = (timeit(lambda p=peer: p(x.clone(), target), device, args.repeats)
                      if peer else None)
        table.add_row(
            name, f"{bs / ours_t:.1f}",
            peer_name(name) if peer else "-",
            f"{bs / peer_t:.1f}" if peer_t else "-",
            f"{peer_t / ours_t:.2f}x" if peer_t else "-",
            f"{passes.forwards:g} F + {passes.backwards:g} B",
            f"{ours_t / floor_t:.2f}" if floor_t > 0 else "-",
        )
    console = Console(width=150)
    console.print(table)
    if "integrated_gradients" in args.methods and "integrated_gradients" in peer_calls:
        console.print(ig_memory_table(model, x[: args.ig_batch], target[: args.ig_batch], ig_chunk,
                                      peer_calls, device, args.repeats, args.model))


def ig_memory_table(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, chunk: int,
                    peer_calls: dict, device: torch.device, repeats: int, model_name: str) -> Table:
    """IG time and peak memory: ours (bounded chunks) vs captum's default single pass.

    On the CPU each memory figure comes from a fresh process (peak RSS minus the RSS before the
    call), so memory kept by the allocator from earlier calls cannot hide a peak.
    """
    ours = build_method("integrated_gradients", n_steps=IG_STEPS, internal_batch_size=chunk)
    runs = {
        "ours": (f"xai_bench (internal_batch_size={chunk})", lambda: ours(model, x, target=target)),
        "captum": ("captum default (one pass)",
                   lambda: peer_calls["integrated_gradients"](x.clone(), target, None)),
    }
    table = Table(title=f"integrated gradients, {IG_STEPS} steps, {x.shape[0]} images, "
                        f"{device.type}")
    for col in ("implementation", "maps/s", "peak memory added (MB)"):
        table.add_column(col, justify="right")
    for key, (label, fn) in runs.items():
        if device.type == "cuda":
            mb = peak_memory_mb(fn, device)
        else:
            cmd = [sys.executable, __file__, "--model", model_name, "--batch", str(x.shape[0]),
                   "--ig-internal-batch", str(chunk), "--ig-memory-child", key, "--device", "cpu"]
            mb = float(subprocess.run(cmd, capture_output=True, text=True, check=True)
                       .stdout.strip().splitlines()[-1])
        table.add_row(label, f"{x.shape[0] / timeit(fn, device, repeats):.2f}", f"{mb:.0f}")
    return table


def ig_memory_child(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, chunk: int,
                    which: str) -> None:
    """Print the peak RSS one IG call adds in this fresh process (after a tiny warm-up)."""
    with torch.no_grad():
        model(x[:1])
    if which == "ours":
        method = build_method("integrated_gradients", n_steps=IG_STEPS, internal_batch_size=chunk)
        print(peak_memory_mb(lambda: method(model, x, target=target), torch.device("cpu")))
    else:
        print(peak_memory_mb(lambda: captum_ig(model)(x.clone(), target, None),
                             torch.device("cpu")))


if __name__ == "__main__":
    main()
