"""What DDP must know about a training run before it wraps the model.

Lightning builds the DDP strategy from the trainer config alone; two of its settings depend on
the model and the objective, so `ClassifierModule.setup` adjusts them here, after the strategy
is built and before it wraps the network:

- `sync_batchnorm` (conf/trainer/ddp.yaml): SyncBatchNorm does not run on CPU processes, and
  its backward cannot be differentiated again (ATCON's consistency loss does: guided backprop
  and Grad-CAM with create_graph). On CPU, and for second-order objectives, BatchNorm keeps
  per-device statistics (DDP without the sync) and the run says so.
- `find_unused_parameters`: ATCON's consistency loss gives some parameters no gradient (the
  classifier's bias, a ViT's final LayerNorm bias: a CAM depends on d logit / d features, which
  they do not change), and the alternating mode switches between losses step by step. DDP must
  then look for such parameters every step (a graph walk, small beside ATCON's three passes);
  a parameter unused on every rank keeps `grad = None`, as in one process, so optimizers skip
  it. A zero-weighted `0 * sum(p)` term would skip the walk but is not neutral: its zero
  gradients would let momentum, Adam's moments and weight decay move those parameters.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from xai_bench.modules.objectives import SupervisedObjective


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def adapt_ddp_strategy(strategy: Any, net: nn.Module,
                       objective: SupervisedObjective) -> dict[str, bool]:
    """Adjust a DDP strategy (before it wraps the model) to the network and the objective.

    Returns what changed: {"sync_batchnorm_off": ..., "find_unused_parameters": ...}.
    Reads and sets the strategy's `_layer_sync` and `_ddp_kwargs`, the two places Lightning
    keeps these settings until `DDPStrategy.setup`; tests/test_ddp_paths.py runs both paths.
    """
    changed = {"sync_batchnorm_off": False, "find_unused_parameters": False}
    if not isinstance(strategy, DDPStrategy):
        return changed
    label = objective.label()
    if getattr(strategy, "_layer_sync", None) is not None:
        device = strategy.root_device.type
        if not has_batchnorm(net):
            pass  # nothing to synchronise
        elif device != "cuda":
            strategy._layer_sync = None
            changed["sync_batchnorm_off"] = True
            rank_zero_info(
                f"trainer.sync_batchnorm: SyncBatchNorm runs only on CUDA devices; on {device} "
                "each process normalises with its own batch statistics."
            )
        elif objective.second_order:
            strategy._layer_sync = None
            changed["sync_batchnorm_off"] = True
            rank_zero_warn(
                f"trainer.sync_batchnorm is off for {label}: its loss differentiates BatchNorm's "
                "backward again, which SyncBatchNorm does not support; each GPU keeps its own "
                "BatchNorm statistics."
            )
    if objective.unused_parameters:
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if kwargs is None:
            raise RuntimeError(
                "this Lightning version keeps no DDP kwargs on the strategy; pass "
                f"trainer.strategy=ddp_find_unused_parameters_true for {label}."
            )
        if not kwargs.get("find_unused_parameters"):
            kwargs["find_unused_parameters"] = True
            changed["find_unused_parameters"] = True
            rank_zero_info(
                f"DDP: {label} leaves some parameters without gradient in some steps "
                "(find_unused_parameters=True)."
            )
    return changed
