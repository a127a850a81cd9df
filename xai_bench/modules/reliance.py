"""What a trained model relies on, measured at the end of training on a dataset that sets its
cues against each other (the synthetic set with a planted marker, docs/known-truth.md).

The evaluation measures the same number beside the maps (ModelReliance); measuring it when
training ends puts it in the training run's metrics.json and W&B run, so a sweep shows each
model's reliance before anything is explained.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from xai_bench.metrics.known_truth import reliance_columns
from xai_bench.report.tables import known_truth_summary

__all__ = ["SPLIT", "measure_reliance"]

SPLIT = "decorrelated"


@torch.no_grad()
def measure_reliance(net: nn.Module, datamodule: Any, samples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, Any] | None:
    """metrics.json's `known_truth` block (reliance, agree accuracy, their bootstrap intervals,
    the image counts) of `net` on the datamodule's decorrelated split; None for a datamodule
    without one. Runs the whole split in one process (call it on one rank: it is a few hundred
    forwards), the network in eval mode and left as it was found."""
    if SPLIT not in getattr(datamodule, "eval_splits", ()):
        return None
    dataset = datamodule.split_dataset(SPLIT)
    loader = DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False)
    state = next(itertools.chain(net.parameters(), net.buffers()), None)
    device = state.device if state is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    preds, lesions, markers = [], [], []
    try:
        for batch in loader:
            preds.append(net(batch["image"].to(device)).argmax(dim=-1).cpu())
            lesions.append(batch["has_mask"].bool())
            markers.append((batch["marker_mask"] > 0).flatten(1).any(dim=1))
    finally:
        net.train(was_training)
    table = reliance_columns(torch.cat(preds), torch.cat(lesions), torch.cat(markers))
    return known_truth_summary({k: v.float() for k, v in table.items()}, samples, level, seed)
