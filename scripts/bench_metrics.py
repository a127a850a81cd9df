"""Evaluation-metric speed: xai_bench vs Quantus on the same model, images, maps and masks.

    python scripts/bench_metrics.py                        # vit_tiny 224 px, 16 images, CPU
    python scripts/bench_metrics.py --steps 20 --samples 5 # a quicker run
    python scripts/bench_metrics.py --device cuda          # xai_bench on the GPU (Quantus: numpy)

Mask-based metrics (pointing game, relevance mass) are compared directly (goal: >= 10x faster).
Model-bound metrics are compared with their floor, the model calls they cannot avoid times the
measured cost of one call (goal: within 1.2x): region perturbation needs steps + 1 forwards,
Max-Sensitivity one explanation per noise draw. Each row also prints how far the two libraries'
scores are apart, so the timing compares the same computation.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from bench_common import device_label, pick_device, timeit
from rich.console import Console
from rich.table import Table

from xai_bench.explain import build_method
from xai_bench.metrics.functional import faithfulness as FF
from xai_bench.metrics.functional import localisation as FL
from xai_bench.models import build_model

MODELS = {
    "vit_tiny": dict(arch="vit_tiny_patch16_224", img=224, kwargs={}),
    "vit_b16": dict(arch="vit_base_patch16_224", img=224, kwargs={}),
}


def box_masks(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random axis-aligned box per image, like the study's ROI masks."""
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        h, w = (torch.randint(size // 8, size // 2, (2,), generator=gen)).tolist()
        y, x = (torch.randint(0, size - h, (1,), generator=gen).item(),
                torch.randint(0, size - w, (1,), generator=gen).item())
        masks[i, y : y + h, x : x + w] = 1
    return masks


def quantus_localisation(metric_cls, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    n = maps.shape[0]
    metric = metric_cls(disable_warnings=True, normalise=False, abs=False)
    return np.asarray(metric(model=None, x_batch=np.zeros((n, 1, *maps.shape[1:]), np.float32),
                             y_batch=np.zeros(n, np.int64), a_batch=maps[:, None],
                             s_batch=masks[:, None], channel_first=True), dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="region-perturbation steps")
    parser.add_argument("--region", type=int, default=16, help="region size in px")
    parser.add_argument("--samples", type=int, default=10, help="Max-Sensitivity noise draws")
    parser.add_argument("--radius", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats of the fast metrics (median)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-quantus-model", action="store_true",
                        help="skip Quantus' slow model-bound runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import quantus

    device = pick_device(args.device)
    spec = MODELS[args.model]
    torch.manual_seed(0)
    model = build_model(spec["arch"], 2, spec["img"], **spec["kwargs"]).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    n, size = args.images, spec["img"]
    x = torch.randn(n, 3, size, size, generator=gen).to(device)
    masks = box_masks(n, size, gen).to(device)
    maps = build_method("attention")(model, x).maps  # ties inside each 16 px token block
    with torch.no_grad():
        target = model(x).argmax(-1)
    saliency = build_method("saliency")
    maps_np, masks_np = maps.cpu().numpy(), masks.cpu().numpy().astype(np.float32)
    x_np, y_np = x.cpu().numpy(), target.cpu().numpy()

    rows: list[tuple[str, str, float | None, float, float | None, str]] = []

    # --- mask-based: compare directly
    for name, ours_fn, peer_cls in (
        ("pointing game", FL.pointing_game, quantus.PointingGame),
        ("relevance mass", FL.relevance_mass, quantus.RelevanceMassAccuracy),
    ):
        ours_t = timeit(lambda f=ours_fn: f(maps, masks), device, args.repeats)
        peer_t = timeit(lambda c=peer_cls: quantus_localisation(c, maps_np, masks_np),
                        torch.device("cpu"), max(1, args.repeats // 2))
        diff = np.abs(ours_fn(maps, masks).cpu().numpy()
                      - quantus_localisation(peer_cls, maps_np, masks_np)).max()
        rows.append((name, "-", None, ours_t, peer_t, f"{diff:.1e}"))

    # --- region perturbation (AOPC): steps + 1 forwards
    def forward() -> None:
        with torch.no_grad():
            model(x)

    forward_t = timeit(forward, device, max(10, args.repeats))  # the floor's unit: one call

    def ours_rp() -> torch.Tensor:
        return FF.region_perturbation(model, x, maps, target, region=args.region, order="morf",
                                      steps=args.steps, fill="min")

    ours_t = timeit(ours_rp, device, 1, warmup=False)
    peer_t, diff = None, "-"
    if not args.no_quantus_model:
        metric = quantus.RegionPerturbation(patch_size=args.region, order="morf",
                                            regions_evaluation=args.steps, normalise=False,
                                            abs=False, perturb_baseline="black",
                                            disable_warnings=True)
        cpu_model = model.cpu()
        peer_out: list[np.ndarray] = []
        peer_t = timeit(lambda: peer_out.append(np.asarray(metric(
            model=cpu_model, x_batch=x_np, y_batch=y_np, a_batch=maps_np[:, None], device="cpu"))),
            torch.device("cpu"), 1, warmup=False)
        model.to(device)
        ours_aopc = FF.aopc(ours_rp()).cpu().numpy()
        peer_aopc = peer_out[-1].sum(axis=1) / (args.steps + 1)
        diff = f"{np.abs(ours_aopc - peer_aopc).max():.1e}"
    rows.append((f"region perturbation ({args.steps} steps, {args.region} px)",
                 f"{args.steps + 1} forwards", forward_t * (args.steps + 1), ours_t, peer_t, diff))

    # --- Max-Sensitivity: one explanation per draw
    explain_t = timeit(lambda: saliency(model, x, target=target), device, max(10, args.repeats))

    def explain(images: torch.Tensor) -> torch.Tensor:
        return saliency(model, images, target=target.repeat(images.shape[0] // n)).maps

    ref = explain(x)
    ours_t = timeit(lambda: FF.max_sensitivity(explain, x, ref, radius=args.radius,
                                               samples=args.samples, normalise=True),
                    device, 1, warmup=False)
    peer_t = None
    if not args.no_quantus_model:
        def quantus_explain(model, inputs, targets, **kwargs) -> np.ndarray:
            images = torch.as_tensor(inputs, device=device)
            return (saliency(model, images, target=torch.as_tensor(targets, device=device))
                    .maps.cpu().numpy()[:, None])

        metric = quantus.MaxSensitivity(nr_samples=args.samples, lower_bound=args.radius,
                                        normalise=False, abs=False, disable_warnings=True)
        peer_t = timeit(lambda: metric(model=model, x_batch=x_np, y_batch=y_np,
                                       a_batch=ref.cpu().numpy()[:, None],
                                       explain_func=quantus_explain, device=str(device)),
                        device, 1, warmup=False)
    rows.append((f"Max-Sensitivity ({args.samples} draws, r={args.radius})",
                 f"{args.samples} saliency calls", explain_t * args.samples, ours_t, peer_t,
                 "(random noise)"))

    table = Table(title=f"{spec['arch']} {size}px, {n} images; "
                        f"xai_bench on {device_label(device)}, Quantus on cpu")
    for col in ("metric", "floor", "floor s", "xai_bench s", "x floor", "Quantus s", "speed-up",
                "max |diff|"):
        table.add_column(col, justify="right")
    for name, floor_what, floor_t, ours, peer, diff in rows:
        table.add_row(name, floor_what, f"{floor_t:.3f}" if floor_t else "-", f"{ours:.4f}",
                      f"{ours / floor_t:.2f}" if floor_t else "-", f"{peer:.3f}" if peer else "-",
                      f"{peer / ours:.1f}x" if peer else "-", diff)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
