"""Evaluation-metric speed: xai_bench vs Quantus 0.6 on the same model, images, maps and masks.

    python scripts/bench_metrics.py                     # vit_tiny 224 px, 8 images, CPU
    python scripts/bench_metrics.py --images 2 --steps 2 --samples 2   # a smoke run
    python scripts/bench_metrics.py --device cuda       # xai_bench on the GPU (Quantus: CPU)
    python scripts/bench_metrics.py --only aopc,auc     # some rows

One row per registered metric that Quantus also has (scripts/bench_metrics_quantus.py says how
each is matched, as in tests/test_metrics_<family>.py; captum's infidelity for Infidelity). Rows
that Quantus cannot run on the RGB model (IROF, ROAD, NonSensitivity) run BOTH libraries on a
one-channel view of the same model, the randomisation rows on a copy whose class token and
position embedding are buffers (scripts/bench_metrics_bridges.py); the row's note says so, and
a peer that computes another measure is timed with the reason in the diff column. Each row runs
in this one process on the same inputs. Map-only metrics are compared with Quantus directly
(goal: >= 10x faster). Model-bound metrics are compared with their floor: the model calls they
cannot avoid, the metric's declared `cost(model, H, W)` (forwards, backwards, explanations per
image; IROF: what it `spent`) times the measured cost of one forward, forward + backward and
explanation on the model the row runs on (goal: within 1.2x). Each row prints the peak memory
(tracemalloc on the CPU, torch.cuda.max_memory_allocated on the GPU) and how far the two
libraries' per-image scores are apart, so the timing compares the same computation.
"""

from __future__ import annotations

import argparse
import copy
import time
import tracemalloc
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from bench_common import device_label, pick_device, sync, timeit
from bench_metrics_bridges import make_variant
from bench_metrics_quantus import ROWS, Ctx, Row
from rich.console import Console
from rich.table import Table

from xai_bench.explain import build_method
from xai_bench.metrics import METRICS, EvalBatch, build_metric
from xai_bench.metrics.base import Cost
from xai_bench.models import build_model

MODELS = {
    "vit_tiny": dict(arch="vit_tiny_patch16_224", img=224, kwargs={}),
    "vit_b16": dict(arch="vit_base_patch16_224", img=224, kwargs={}),
}
MB = 2**20


def box_masks(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random axis-aligned box per image, like the study's ROI masks."""
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        h, w = (torch.randint(size // 8, size // 2, (2,), generator=gen)).tolist()
        y, x = (torch.randint(0, size - h, (1,), generator=gen).item(),
                torch.randint(0, size - w, (1,), generator=gen).item())
        masks[i, y : y + h, x : x + w] = 1
    return masks


def peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak MiB) of one run: CUDA's allocator peak on a GPU, tracemalloc's
    (the Python and numpy allocations) on the CPU."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        used = (torch.cuda.max_memory_allocated(device) - base) / MB
    else:
        used = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()
    return out, seconds, used


def unit_costs(model: torch.nn.Module, method: Any, x: torch.Tensor, target: torch.Tensor,
               device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per image of one forward, one forward + backward and one explanation."""
    n = x.shape[0]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def backward() -> None:
        inputs = x.detach().requires_grad_(True)
        model(inputs).gather(1, target[:, None]).sum().backward()

    return {"forward": timeit(forward, device, repeats) / n,
            "backward": timeit(backward, device, repeats) / n,
            "explain": timeit(lambda: method(model, x, target=target), device, repeats) / n}


def floor_of(cost: Cost, units: dict[str, float], n: int) -> float:
    """The model calls a metric cannot avoid on n images: a backward follows a forward."""
    return n * (cost.forwards * units["forward"]
                + cost.backwards * (units["backward"] - units["forward"])
                + cost.explanations * units["explain"])


def cost_text(cost: Cost) -> str:
    parts = [f"{v:g}{k}" for k, v in (("F", cost.forwards), ("B", cost.backwards),
                                      ("E", cost.explanations)) if v]
    return " + ".join(parts) or "map only"


@dataclass
class Inputs:
    """One set of inputs both libraries run on: our batch (on the device), the peer's CPU
    numpy view of it, and the per-image cost of one model call on it."""

    batch: EvalBatch
    ctx: Ctx
    units: dict[str, float]


def run_row(row: Row, inputs: Inputs, device: torch.device,
            args: argparse.Namespace) -> list[str]:
    """One table row: time, floor, memory and score difference of both libraries."""
    batch, ctx, units = inputs.batch, inputs.ctx, inputs.units
    n, (h, w) = batch.images.shape[0], batch.maps.shape[1:]
    settings = row.ours(args)
    patch = row.patch or nullcontext
    probe = build_metric(row.name, **settings)
    cost = probe.cost(batch.model, h, w)
    model_bound = cost != Cost()

    def ours() -> dict[str, torch.Tensor]:
        with patch():
            metric = build_metric(row.name, **settings).to(device)
            metric.update(batch)
            return metric.compute()

    repeats = 1 if model_bound else args.repeats
    ours_t = timeit(ours, device, repeats, warmup=not model_bound)
    table, _, ours_mb = peak(ours, device)
    column = row.column or next(k for k in table if k != "id")
    cost = probe.spent(table) or cost  # IROF: the superpixels each image really had
    scores = table[column].view(-1).double().cpu().numpy()
    floor = floor_of(cost, units, n) if model_bound else None
    peer_t = peer_mb = None
    diff = row.na or "-"
    if row.quantus is not None and not row.na and not (model_bound and args.no_quantus_model):
        theirs, peer_t, peer_mb = peak(lambda: row.quantus(ctx), torch.device("cpu"))
        if row.incomparable:
            diff = row.incomparable
        else:
            mine, theirs = (row.pair(table, theirs) if row.pair
                            else (scores, np.asarray(theirs, dtype=np.float64).reshape(-1)))
            mine, theirs = mine.reshape(-1), theirs.reshape(-1)
            keep = (row.exclude(mine, theirs) if row.exclude
                    else np.ones_like(mine, dtype=bool))
            diff = "none kept"
            if keep.any():
                gap, scale = np.abs(mine[keep] - theirs[keep]).max(), np.abs(theirs[keep]).max()
                diff = f"{gap:.1e} (rel {gap / max(scale, 1e-12):.0e})"
            if row.note:
                diff += f" ({row.note})"
            if row.patch is not None and device.type == "cuda":
                diff += " (ours drew the random layers on cuda: not Quantus' CPU draws)"
    speedup = peer_t / ours_t if peer_t else None
    if model_bound:
        goal = "ok" if ours_t / floor <= 1.2 else "MISS"
    else:
        goal = ("ok" if speedup >= 10 else "MISS") if speedup else "-"
    label = row.label or (f"{row.name}:{column}" if column != row.name else row.name)
    return [label, cost_text(cost),
            f"{floor:.3f}" if floor else "-", f"{ours_t:.4f}",
            f"{ours_t / floor:.2f}" if floor else "-", f"{peer_t:.3f}" if peer_t else "-",
            f"{speedup:.1f}x" if speedup else "-", goal, f"{ours_mb:.1f}",
            f"{peer_mb:.1f}" if peer_mb is not None else "-", diff]


def make_inputs(model: torch.nn.Module, x: torch.Tensor, masks: torch.Tensor | None,
                method: Any, device: torch.device, repeats: int,
                args: argparse.Namespace) -> Inputs:
    """Explain x on the model (the explained class: its prediction) and wrap the batch, the
    peer's CPU copy and the unit costs."""
    n = x.shape[0]
    ids = torch.arange(n)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(-1)
    maps = method(model, x, target=target, ids=ids.to(device)).maps
    batch = EvalBatch(images=x, labels=target, ids=ids.to(device), maps=maps, target=target,
                      logits=logits, model=model, method=method, masks=masks,
                      has_mask=None if masks is None
                      else torch.ones(n, dtype=torch.bool, device=device))

    def quantus_explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray,
                        **_: Any) -> np.ndarray:
        return method(model, torch.as_tensor(inputs), target=torch.as_tensor(targets)
                      ).maps[:, None].cpu().numpy()

    ctx = Ctx(model=copy.deepcopy(model).cpu(), x=x.cpu().numpy(), y=target.cpu().numpy(),
              maps=maps.cpu().numpy(),
              masks=None if masks is None else masks.cpu().numpy().astype(np.float32),
              ids=ids, explain=quantus_explain, args=args, classes=logits.shape[-1])
    return Inputs(batch, ctx, unit_costs(model, method, x, target, device, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--method", default="saliency", help="the explanation method")
    parser.add_argument("--steps", type=int, default=10,
                        help="region-perturbation steps, continuity translations")
    parser.add_argument("--region", type=int, default=16, help="region / patch size in px")
    parser.add_argument("--patch", type=int, default=32, help="selectivity patch size in px")
    parser.add_argument("--segments", type=int, default=16, help="IROF superpixels")
    parser.add_argument("--features", type=int, default=3584,
                        help="pixels per step of the pixel-wise curves (224 x 16: 14 steps)")
    parser.add_argument("--samples", type=int, default=5, help="noise draws / runs")
    parser.add_argument("--subset", type=int, default=224,
                        help="faithfulness-correlation pixels per run")
    parser.add_argument("--radius", type=float, default=0.05, help="sensitivity radius")
    parser.add_argument("--k", type=int, default=1000, help="top-k intersection k")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats of the map-only metrics (median)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--only", default="", help="comma-separated metric names")
    parser.add_argument("--no-quantus-model", action="store_true",
                        help="skip Quantus' slow model-bound runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

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
    method = build_method(args.method)
    repeats = max(3, args.repeats)
    base = make_inputs(model, x, masks, method, device, repeats, args)
    units = base.units
    variants: dict[str, Inputs] = {"rgb": base}

    def inputs_for(kind: str) -> Inputs:
        """The row's inputs, built on first use: a variant of the model and images."""
        if kind not in variants:
            view, images = make_variant(kind, model, x, args.region)
            variants[kind] = make_inputs(view, images,
                                         None if kind.startswith("gray") else masks,
                                         method, device, repeats, args)
        return variants[kind]

    only = {s for s in args.only.split(",") if s}
    rows = [r for r in ROWS if r.name in METRICS and (not only or r.name in only)]
    table = Table(title=f"{spec['arch']} {size}px, {n} images, {args.method} maps; xai_bench on "
                        f"{device_label(device)}, peer (Quantus 0.6; captum 0.9 for "
                        f"infidelity) on cpu; per image: forward "
                        f"{units['forward'] * 1e3:.1f} ms, forward+backward "
                        f"{units['backward'] * 1e3:.1f} ms, explanation "
                        f"{units['explain'] * 1e3:.1f} ms")
    for col in ("metric", "cost / image", "floor s", "xai_bench s", "x floor", "peer s",
                "speed-up", "goal", "ours MiB", "peer MiB", "max |diff|"):
        table.add_column(col, justify="left" if col in ("metric", "max |diff|") else "right")
    console = Console(width=200)
    for row in rows:
        try:
            table.add_row(*run_row(row, inputs_for(row.variant), device, args))
        except Exception as error:  # noqa: BLE001 - one broken row must not hide the others
            table.add_row(row.label or row.name, *["-"] * 9,
                          f"error: {type(error).__name__}: {error}"[:120])
    console.print(table)
    missing = sorted(set(METRICS) - {r.name for r in ROWS})
    console.print(f"not in Quantus (no row): {', '.join(missing)}")


if __name__ == "__main__":
    main()
