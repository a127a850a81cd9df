"""ATCON's cost: one training step of each objective mode next to a supervised step, same model.

    python scripts/bench_atcon.py                          # vit_tiny 64 px and resnet34 64 px, CPU
    python scripts/bench_atcon.py --models vit_b16 resnet50 --img-size 224 --batch-size 32   # a GPU

A supervised step is forward, loss, backward, optimizer step. An ATCON consistency step runs the
model three times (x for Grad-CAM, x under the guided rules, the masked x), builds both CAMs and
the guided gradients with create_graph=True, then backpropagates through all of it (second
order): several times the supervised cost is the expected price, and the table shows it.
Combining = supervised + consistency on a second batch. Median of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_common import device_label, pick_device, sync
from bench_train import MODEL_IMG_SIZE, build_net
from rich.console import Console
from rich.table import Table

from xai_bench.modules.consistency import consistency_loss


def _steps(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, callable]:
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def supervised() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(images), labels).backward()
        optimizer.step()

    def consistency() -> None:
        optimizer.zero_grad(set_to_none=True)
        consistency_loss(net, images).loss.backward()
        optimizer.step()

    def combining() -> None:
        optimizer.zero_grad(set_to_none=True)
        (F.cross_entropy(net(images), labels) + consistency_loss(net, images).loss).backward()
        optimizer.step()

    return {"supervised": supervised, "atcon consistency (unsupervised)": consistency,
            "atcon combining": combining}


def bench_model(model: str, img_size: int, batch_size: int, repeats: int,
                device: torch.device) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    net = build_net(model, img_size).to(device).train()
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    steps = _steps(net, images, labels)
    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):  # interleaved: drifts of a shared machine hit every mode alike
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return [(name, statistics.median(values)) for name, values in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_tiny", "resnet34"])
    parser.add_argument("--img-size", type=int, default=None,
                        help="default: the model's usual size (64 px for CNNs on a CPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)

    table = Table(title=f"ATCON step vs supervised step, batch {args.batch_size}, "
                        f"{device_label(device)}")
    for column in ("model", "img", "step", "seconds", "x supervised"):
        table.add_column(column, justify="right" if column in ("img", "seconds", "x supervised")
                         else "left")
    for model in args.models:
        img_size = args.img_size or (MODEL_IMG_SIZE.get(model, 224) if device.type == "cuda"
                                     else 64)
        results = bench_model(model, img_size, args.batch_size, args.repeats, device)
        base = results[0][1]
        for name, seconds in results:
            table.add_row(model, str(img_size), name, f"{seconds:.4f}", f"{seconds / base:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
