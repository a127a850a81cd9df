"""Training throughput: xai_bench's training step vs a bare PyTorch loop, same model and batch.

    python scripts/bench_train.py                      # vit_tiny at 64 px (the demo model), CPU
    python scripts/bench_train.py --model vit_b16      # ViT-B/16 at 224 px; bf16 + MFU on a GPU
    python scripts/bench_train.py --model vit_b16 --compile

"xai_bench" is the real thing a user runs: ClassifierModule (cross-entropy, torchmetrics,
self.log) driven by a Lightning Trainer over a DataLoader. "bare" is the minimal loop:
forward, loss, backward, step. Both see one pre-built batch on the device, so the difference is
the framework's per-step overhead. Timings are interleaved over repeats; the median is shown.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_common import sync
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from xai_bench.modules import ClassifierModule, build_optimizer
from xai_bench.tracking.resolvers import register_resolvers

register_resolvers()  # conf/ uses xai_bench's resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_IMG_SIZE = {"vit_b16": 224, "vit_tiny": 64, "vit_test": 32, "deit_tiny": 224, "resnet50": 224}
# dense bf16 tensor-core peaks (FLOP/s) by device-name fragment
BF16_PEAK = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12,
             "L40S": 362.0e12}


def build_net(model: str, img_size: int, num_classes: int = 2) -> torch.nn.Module:
    """The network exactly as `python -m xai_bench.train model=<model>` builds it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"dataset.img_size={img_size}",
                                          "init=random", f"dataset.num_classes={num_classes}",
                                          "paths.output_dir=."])
    return hydra.utils.instantiate(cfg.model)


class RepeatedBatch(Dataset):
    """The same collated batch `n` times: isolates the training step from data loading."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batch


def time_bare(net: torch.nn.Module, batch: dict, steps: int, warmup: int, bf16: bool,
              device: torch.device) -> float:
    net = net.to(device).train()
    opt = build_optimizer(net.parameters(), name="adamw", lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    x, y = batch["image"], batch["label"]
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


class _StepTimer(pl.Callback):
    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.end = time.perf_counter()


def time_xai_bench(net: torch.nn.Module, batch: dict, steps: int, warmup: int, bf16: bool,
                   device: torch.device, compile: bool) -> float:
    module = ClassifierModule(
        net, optimizer=lambda params: build_optimizer(params, name="adamw", lr=1e-4),
        num_classes=2, compile=compile)
    timer = _StepTimer(warmup, device)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_steps=warmup + steps, limit_val_batches=0,
        precision="bf16-mixed" if bf16 else "32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        num_sanity_val_steps=0,
    )
    cpu_batch = {k: v.cpu() for k, v in batch.items()}
    loader = DataLoader(RepeatedBatch(cpu_batch, warmup + steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start


def forward_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", help="a conf/model option")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both (module.compile=true)")
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    img = args.img_size or MODEL_IMG_SIZE.get(args.model, 224)
    bs = args.batch_size or (128 if gpu else 64)
    steps = args.steps or (50 if gpu else 20)
    bf16 = gpu and torch.cuda.is_bf16_supported()
    pl.seed_everything(0, verbose=False)
    torch.set_float32_matmul_precision("high")

    base = build_net(args.model, img)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(bs, 3, img, img, generator=g).to(device),
             "label": torch.randint(0, 2, (bs,), generator=g).to(device)}

    bare_t, ours_t = [], []
    for _ in range(args.repeats):
        net = copy.deepcopy(base)
        bare_t.append(time_bare(torch.compile(net) if args.compile else net, batch, steps,
                                args.warmup, bf16, device))
        ours_t.append(time_xai_bench(copy.deepcopy(base), batch, steps, args.warmup, bf16, device,
                                     args.compile))
    bare_ips = steps * bs / statistics.median(bare_t)
    ours_ips = steps * bs / statistics.median(ours_t)

    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    table = Table(title=f"training step, {args.model} {img}px, batch {bs}, "
                        f"{'bf16-mixed' if bf16 else 'fp32'}, {name}")
    for col in ("implementation", "images/s", "ms/step", "overhead vs bare"):
        table.add_column(col, justify="right")
    table.add_row("bare PyTorch loop", f"{bare_ips:.1f}", f"{1e3 * bs / bare_ips:.1f}", "-")
    table.add_row("xai_bench (Lightning module)", f"{ours_ips:.1f}", f"{1e3 * bs / ours_ips:.1f}",
                  f"{100 * (bare_ips - ours_ips) / bare_ips:+.1f}%")
    console = Console()
    console.print(table)
    if gpu:
        # fwd + bwd ~ 3x fwd
        flops_per_image = 3 * forward_flops(base.to(device), batch["image"][:1])
        peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
        achieved = flops_per_image * ours_ips
        mfu = (f"{100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak
               else "unknown peak")
        console.print(f"xai_bench: {achieved / 1e12:.1f} TFLOP/s model FLOPs "
                      f"({flops_per_image / 1e9:.1f} GFLOP/image), MFU {mfu}")


if __name__ == "__main__":
    main()
