"""Training objectives: what a training step optimises (conf/objective/).

  supervised   cross-entropy (BCE for multi-label) on labelled batches
  atcon        ATCON (docs/atcon.md), in one of four modes:
    supervised     the plain supervised loss (ATCON's baseline)
    unsupervised   consistency only, on unlabeled images (fine-tunes a supervised checkpoint)
    alternating    each step is supervised with probability alpha*N_sup / (alpha*N_sup + N_unsup),
                   else unsupervised: alpha OVERSAMPLES labelled batches, it is not a loss weight
    combining      supervised loss + alpha * consistency: here alpha IS a loss weight

An objective that needs unlabeled images says so (`uses_unlabeled`); the module then sets the data
module's one pairing setting (`pair_unlabeled`), which yields {"labelled": batch, "unlabeled":
batch} pairs (the low-data regime's pool, or the training images themselves when there is no
pool, their labels never read), and tells the objective the sizes of both (`bind`).
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import torch
from torch import nn

from xai_bench.modules.consistency import check_consistency_options, consistency_loss
from xai_bench.utils.errors import ConfigError

Batch = dict[str, Any]
ATCON_MODES = ("supervised", "unsupervised", "alternating", "combining")


class TrainableClassifier(Protocol):
    """What an objective needs of the module it trains (`ClassifierModule` is one): the network,
    the epoch (warm-up) and the supervised loss of a labelled batch. Objectives depend on this,
    not on the module, so any LightningModule with these three can train with them."""

    net: nn.Module

    @property
    def current_epoch(self) -> int: ...

    def supervised_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]: ...


def labelled_part(batch: Batch) -> Batch:
    return batch["labelled"] if "labelled" in batch else batch


class SupervisedObjective:
    """The plain supervised loss."""

    name = "supervised"
    # ATCON's training mode; None for objectives without modes
    mode: str | None = None
    uses_unlabeled = False
    # the loss differentiates a gradient again (create_graph): no torch.compile, no SyncBatchNorm
    second_order = False
    # some steps leave parameters without gradient: DDP must look for them (find_unused_parameters)
    unused_parameters = False

    def __init__(self) -> None:
        # explicit, so that `+objective.foo=1` fails as "unexpected keyword argument 'foo'"
        # (reported as one line) rather than "takes no arguments"
        pass

    def label(self) -> str:
        """How messages name this objective: `objective=atcon mode=unsupervised`."""
        return f"objective={self.name}" + (f" mode={self.mode}" if self.mode else "")

    def hparams(self) -> dict[str, Any]:
        return {"name": self.name}

    def bind(self, n_labelled: int, n_unlabeled: int) -> None:
        """Told the data's sizes before training (the alternating sampler needs them)."""

    def training_loss(self, module: TrainableClassifier, batch: Batch,
                      step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, _ = module.supervised_step(labelled_part(batch))
        return loss, {}


class AlternatingSampler:
    """Chooses, per training step, a supervised or an unsupervised batch.

    P(supervised) = alpha * N_sup / (alpha * N_sup + N_unsup), as ATCON's alternating mode drew
    it. Each step's draw depends only on (seed, step): the same on every DDP rank, and again
    after a requeued job resumes.
    """

    def __init__(self, alpha: float, n_labelled: int, n_unlabeled: int, seed: int = 0) -> None:
        if alpha <= 0:
            raise ConfigError(f"objective.alpha must be > 0 in alternating mode; got {alpha}.")
        if n_labelled < 1 or n_unlabeled < 0:
            raise ConfigError(f"alternating mode needs labelled images; "
                              f"got {n_labelled} labelled, {n_unlabeled} unlabeled.")
        self.p_supervised = alpha * n_labelled / (alpha * n_labelled + n_unlabeled)
        self.seed = int(seed)

    def supervised(self, step: int) -> bool:
        key = zlib.crc32(f"{self.seed}:{int(step)}".encode())
        draw = torch.rand((), generator=torch.Generator().manual_seed(key)).item()
        return draw < self.p_supervised


class ATCONObjective(SupervisedObjective):
    """ATCON's four training modes (module docstring); consistency settings as in
    xai_bench.modules.consistency.consistency_loss."""

    name = "atcon"

    def __init__(
        self,
        mode: str = "combining",
        alpha: float = 1.0,
        mask_intensity: float = 8.0,
        similarity: str = "pearson",
        resolution: str = "feature",
        layer: str | None = None,
        gelu_rule: bool = True,
        gb_normalise: str = "minmax",
        warmup_epochs: int = 0,
        seed: int = 0,
    ) -> None:
        if mode not in ATCON_MODES:
            raise ConfigError(f"objective.mode must be one of {ATCON_MODES}; got {mode!r}.")
        if mode == "combining" and alpha < 0:
            raise ConfigError(f"objective.alpha (the consistency loss weight in combining mode) "
                              f"must be >= 0; got {alpha}.")
        check_consistency_options(similarity, resolution, mask_intensity, gb_normalise)
        self.mode = mode
        self.alpha = float(alpha)
        self.mask_intensity = float(mask_intensity)
        self.similarity = similarity
        self.resolution = resolution
        self.layer = layer
        self.gelu_rule = bool(gelu_rule)
        self.gb_normalise = gb_normalise
        if int(warmup_epochs) < 0:
            raise ConfigError(f"objective.warmup_epochs must be >= 0; got {warmup_epochs}.")
        self.warmup_epochs = int(warmup_epochs)
        self.seed = int(seed)
        self.sampler: AlternatingSampler | None = None

    @property
    def uses_unlabeled(self) -> bool:  # type: ignore[override]
        return self.mode != "supervised"

    @property
    def second_order(self) -> bool:  # type: ignore[override]
        """Every mode but supervised trains through the CAMs' gradients (create_graph=True)."""
        return self.mode != "supervised"

    @property
    def unused_parameters(self) -> bool:  # type: ignore[override]
        """Consistency-only steps give no gradient to the classifier's bias (a CAM depends on
        d logit / d features only), nor on a ViT to the final LayerNorm's bias (measured:
        ResNet34 fc.bias; ViT norm.bias, head.bias); combining mode adds the supervised loss,
        which reaches every parameter."""
        return self.mode in ("unsupervised", "alternating")

    def hparams(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "alpha": self.alpha,
                "mask_intensity": self.mask_intensity, "similarity": self.similarity,
                "resolution": self.resolution, "layer": self.layer, "gelu_rule": self.gelu_rule,
                "gb_normalise": self.gb_normalise, "warmup_epochs": self.warmup_epochs,
                "seed": self.seed}

    def bind(self, n_labelled: int, n_unlabeled: int) -> None:
        if self.mode == "alternating":
            self.sampler = AlternatingSampler(self.alpha, n_labelled, n_unlabeled, self.seed)

    def consistency(self, module: TrainableClassifier, images: torch.Tensor) -> torch.Tensor:
        result = consistency_loss(module.net, images, self.mask_intensity, self.similarity,
                                  self.resolution, self.layer, self.gelu_rule, self.gb_normalise)
        return result.loss

    def training_loss(self, module: TrainableClassifier, batch: Batch,
                      step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.mode == "supervised" or module.current_epoch < self.warmup_epochs:
            return super().training_loss(module, batch, step)
        if "unlabeled" not in batch:
            raise ConfigError(f"ATCON's {self.mode} mode needs unlabeled batches: train it through "
                              "`python -m xai_bench.train objective=atcon` "
                              "(the data module pairs them).")
        unlabeled = batch["unlabeled"]["image"]
        if self.mode == "unsupervised":
            loss = self.consistency(module, unlabeled)
            return loss, {"consistency": loss.detach()}
        if self.mode == "alternating":
            if self.sampler is None:
                raise ConfigError("the alternating sampler was not bound to the data sizes "
                                  "(call objective.bind).")
            if self.sampler.supervised(step):
                loss, _ = module.supervised_step(batch["labelled"])
                return loss, {"supervised_step": 1.0, "supervised": loss.detach()}
            loss = self.consistency(module, unlabeled)
            return loss, {"supervised_step": 0.0, "consistency": loss.detach()}
        supervised, _ = module.supervised_step(batch["labelled"])
        consistency = self.consistency(module, unlabeled)
        return supervised + self.alpha * consistency, {"supervised": supervised.detach(),
                                                       "consistency": consistency.detach()}
