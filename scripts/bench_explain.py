"""Interpretability-map throughput: xai_bench vs the peer library, same model and inputs.

    python scripts/bench_explain.py                          # vit_tiny 224 px, 16 images, CPU
    python scripts/bench_explain.py --model vit_b16          # ViT-B/16 (use a GPU)
    python scripts/bench_explain.py --methods gradcam,integrated_gradients --batch 8

For every method: maps/s of xai_bench and of its peer (captum or pytorch-grad-cam; "-" where no
pip library implements the method), and the ratio of xai_bench's time to its floor: one forward
pass (class-agnostic attention methods) or one forward+backward pass to the input gradient,
weights frozen (gradient methods; x n_steps
for Integrated Gradients). Peak memory (GPU: allocator peak; CPU: process peak RSS) is shown for
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
from rich.console import Console
from rich.table import Table

from xai_bench.explain import build_method
from xai_bench.explain.vit_geometry import token_grid

MODELS = {
    "vit_tiny": dict(arch="vit_tiny_patch16_224", img=224, kwargs={}),
    "vit_b16": dict(arch="vit_base_patch16_224", img=224, kwargs={}),
    "vit_test": dict(arch="vit_tiny_patch16_224", img=32,
                     kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2)),
}
FLOOR = {  # which floor each method is measured against: (pass kind, passes per map batch)
    "attention": ("forward", 1), "rollout": ("forward", 1), "random": ("forward", 0),
    "chefer": ("forward+backward", 1), "chefer_generic": ("forward+backward", 1),
    "gradcam": ("forward+backward", 1), "hirescam": ("forward+backward", 1),
    "saliency": ("forward+backward", 1), "input_x_gradient": ("forward+backward", 1),
    "guided_backprop": ("forward+backward", 1),
    "integrated_gradients": ("forward+backward", "n_steps"),
}
IG_STEPS = 50


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


def peers(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], object]]:
    """The peer library call for each method, with the same targets."""
    from captum.attr import GuidedBackprop, InputXGradient, IntegratedGradients, Saliency
    from pytorch_grad_cam import GradCAM, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prefix, gh, gw = token_grid(model)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    def cam(cls: type) -> Callable[[torch.Tensor, torch.Tensor], object]:
        def run(x: torch.Tensor, t: torch.Tensor) -> object:
            with cls(model=model, target_layers=[model.blocks[-1].norm1],
                     reshape_transform=reshape) as c:
                return c(input_tensor=x.requires_grad_(),
                         targets=[ClassifierOutputTarget(int(i)) for i in t])
        return run

    return {
        "gradcam": cam(GradCAM),
        "hirescam": cam(HiResCAM),
        "saliency": lambda x, t: Saliency(model).attribute(x.requires_grad_(), target=t, abs=True),
        "input_x_gradient": lambda x, t: InputXGradient(model).attribute(x.requires_grad_(),
                                                                         target=t),
        "guided_backprop": lambda x, t: GuidedBackprop(model).attribute(x.requires_grad_(),
                                                                       target=t),
        "integrated_gradients": lambda x, t, chunk=None: IntegratedGradients(model).attribute(
            x, target=t, n_steps=IG_STEPS, internal_batch_size=chunk),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(FLOOR))
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
    peer_calls = peers(model)
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
                  if name == "integrated_gradients" else {})
        method = build_method(name, **kwargs)
        ours_t = timeit(lambda m=method: m(model, x, target=target), device, args.repeats)
        kind, passes = FLOOR.get(name, ("forward+backward", 1))
        passes = IG_STEPS if passes == "n_steps" else passes
        floor_t = floors[kind] * passes
        peer = peer_calls.get(name)
        if name == "integrated_gradients":
            peer_t = timeit(lambda p=peer: p(x.clone(), target, ig_chunk), device, args.repeats)
        else:
            peer_t = (timeit(lambda p=peer: p(x.clone(), target), device, args.repeats)
                      if peer else None)
        table.add_row(
            name, f"{bs / ours_t:.1f}",
            "grad-cam" if name in ("gradcam", "hirescam") else ("captum" if peer else "-"),
            f"{bs / peer_t:.1f}" if peer_t else "-",
            f"{peer_t / ours_t:.2f}x" if peer_t else "-",
            f"{kind} x{passes}" if passes else "-",
            f"{ours_t / floor_t:.2f}" if passes else "-",
        )
    console = Console(width=150)
    console.print(table)
    if "integrated_gradients" in args.methods:
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
        print(peak_memory_mb(lambda: peers(model)["integrated_gradients"](x.clone(), target, None),
                             torch.device("cpu")))


if __name__ == "__main__":
    main()
