"""Data loading vs training speed: is the datamodule ever the bottleneck?

    python scripts/bench_data.py                              # a generated dataset, CPU model
    python scripts/bench_data.py --root data/kvasir --dataset kvasir --model vit_b16
                                                              # real data, GPU

Prints the training datamodule's images/s (the dataset config's real train transforms: decode,
resize, crop, flip, normalise) for several worker counts, next to the model's training
images/s (forward + backward + optimizer step; bf16 on a GPU) on the same machine. Without
--root, a dataset of JPEGs the size of the study's stored images is generated in a temp folder
and prepared with the same machinery as the real ones.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from bench_common import device_label, pick_device, sync
from hydra import compose, initialize_config_dir
from PIL import Image
from rich.console import Console
from rich.table import Table

from xai_bench.data.prepare import PrepareConfig, Record, prepare_dataset
from xai_bench.tracking.resolvers import register_resolvers

register_resolvers()  # conf/ uses xai_bench's resolvers

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def generated_dataset(root: Path, n: int, size: tuple[int, int]) -> Path:
    """n JPEGs of `size` (w, h) with smooth random content, prepared into root/kvasir."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    records = []
    for i in range(n):
        image = Image.fromarray(np.roll(base, i, axis=1)).resize(size, Image.BILINEAR)
        path = raw / f"img{i:05d}.jpg"
        image.save(path, quality=90)
        records.append(Record(source=path, label=i % 2, name=f"img{i:05d}"))
    out = root / "kvasir"
    prepare_dataset(records, PrepareConfig(out=out, resize="short256"), ("a", "b"), "generated")
    return root


def datamodule(dataset: str, data_dir: Path, workers: int, batch: int):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", f"paths.data_dir={data_dir}",
                                          f"dataset.num_workers={workers}",
                                          f"dataset.batch_size={batch}",
                                          "dataset.pin_memory=false", "paths.output_dir=."])
    return hydra.utils.instantiate(cfg.dataset), cfg


def loader_images_per_s(dm, batches: int) -> float:
    loader = dm.train_dataloader()
    seen, start = 0, None
    for i, batch in enumerate(loader):
        if i == 1:  # the first batch pays for starting the workers
            start, seen = time.perf_counter(), 0
        seen += batch["image"].shape[0]
        if i >= batches:
            break
    return seen / (time.perf_counter() - start) if start else float("nan")


def model_images_per_s(model_cfg, device: torch.device, batch: int, img: int, steps: int) -> float:
    net = hydra.utils.instantiate(model_cfg).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kvasir",
                        help="dataset config whose transforms are used")
    parser.add_argument("--root", type=Path, default=None,
                        help="paths.data_dir with a prepared <dataset>/")
    parser.add_argument("--images", type=int, default=384, help="generated images (without --root)")
    parser.add_argument("--workers", default="0,1,2,4,8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--model", default=None,
                        help="model config (default: vit_b16 on a GPU, vit_tiny on CPU)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    device = pick_device(args.device)
    model = args.model or ("vit_b16" if device.type == "cuda" else "vit_tiny")

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.root or generated_dataset(Path(tmp), args.images, (320, 256))
        table = Table(title=f"{args.dataset} train transforms, batch {args.batch}; "
                            f"model on {device_label(device)}")
        for col in ("what", "images/s"):
            table.add_column(col, justify="right")
        for workers in (int(w) for w in args.workers.split(",")):
            dm, cfg = datamodule(args.dataset, data_dir, workers, args.batch)
            table.add_row(f"datamodule, {workers} workers",
                          f"{loader_images_per_s(dm, args.batches):.0f}")
        _, cfg = datamodule(args.dataset, data_dir, 0, args.batch)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            mcfg = compose("train", overrides=[f"dataset={args.dataset}", f"model={model}",
                                               "init=random", f"paths.data_dir={data_dir}",
                                               "paths.output_dir=."])
        rate = model_images_per_s(mcfg.model, device, args.batch, int(cfg.dataset.img_size),
                                  args.steps)
        table.add_row(f"model {model} training step", f"{rate:.0f}")
        Console(width=120).print(table)


if __name__ == "__main__":
    main()
