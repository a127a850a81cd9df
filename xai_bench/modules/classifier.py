"""The training LightningModule: one network, cross-entropy, the study's classification metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelExactMatch,
    MultilabelF1Score,
)
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1_score,
    multilabel_accuracy,
    multilabel_auroc,
    multilabel_exact_match,
    multilabel_f1_score,
)
from torchmetrics.utilities import dim_zero_cat

from xai_bench.models.weights import load_init_from
from xai_bench.modules.distributed import adapt_ddp_strategy
from xai_bench.modules.objectives import SupervisedObjective, labelled_part
from xai_bench.utils.class_weights import resolve_class_weights
from xai_bench.utils.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class ScheduleFactory(Protocol):
    """A learning-rate schedule once the length of training is known (`CosineSchedule`):
    `interval` says whether `total` counts epochs or optimizer steps."""

    interval: str

    def __call__(self, optimizer: torch.optim.Optimizer,
                 total: int) -> torch.optim.lr_scheduler.LRScheduler: ...


@runtime_checkable
class UnlabeledPairing(Protocol):
    """A data module that can pair labelled with unlabeled training images (the data modules of
    xai_bench.data): what an objective that trains on unlabeled images (ATCON) needs."""

    pair_unlabeled: bool

    def train_sizes(self) -> tuple[int, int]: ...


def classification_metrics(num_classes: int, prefix: str,
                           multilabel: bool = False) -> MetricCollection:
    """Accuracy, balanced accuracy (mean per-class recall), macro F1 and macro AUROC.

    Multi-label (sigmoid outputs, threshold 0.5): acc = exact-match of the label set,
    balanced_acc = mean per-class accuracy, f1_macro = ATCON's macro F1, macro AUROC."""
    if multilabel:
        return MetricCollection(
            {
                "acc": MultilabelExactMatch(num_classes),
                "balanced_acc": MultilabelAccuracy(num_classes, average="macro"),
                "f1_macro": MultilabelF1Score(num_classes, average="macro"),
                "auroc": MultilabelAUROC(num_classes, average="macro"),
            },
            prefix=prefix,
        )
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class SplitMetrics(Metric):
    """A validation or test split's loss and classification metrics, each image counted once.

    Under DDP, Lightning's DistributedSampler pads the split so that every rank gets as many
    batches: up to world_size - 1 images are scored twice. Like the evaluation metrics
    (xai_bench.metrics.base), this keeps one row per image (id, probabilities, label, loss
    terms), gathers the rows of every rank, drops repeated ids and scores the rest, sorted by
    id: two ranks give one process's numbers. The loss is the split's weighted mean,
    sum(loss_i) / sum(weight_i), which is what the criterion's mean gives on one batch. Rows
    with id -1 (a dataset without image rows) are never merged.
    """

    full_state_update = False

    def __init__(self, num_classes: int, prefix: str, multilabel: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.prefix, self.multilabel = int(num_classes), prefix, bool(multilabel)
        for state in ("ids", "probs", "labels", "loss", "weight"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(self, ids: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
               loss: torch.Tensor, weight: torch.Tensor) -> None:
        """One batch: image ids (B,), probabilities (B, K), labels, per-image loss, weight (B,)."""
        self.ids.append(ids.detach().long().view(-1))
        self.probs.append(probs.detach().float())
        self.labels.append(labels.detach().long())
        self.loss.append(loss.detach().double().view(-1))
        self.weight.append(weight.detach().double().view(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        if isinstance(self.ids, list) and not self.ids:  # nothing scored (a list until synced)
            return {}
        ids = dim_zero_cat(self.ids)
        order = torch.argsort(ids, stable=True)
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = ids[order][1:] != ids[order][:-1]
        first |= ids[order] < 0  # rows without an image id are all kept
        keep = order[first]
        probs, labels = dim_zero_cat(self.probs)[keep], dim_zero_cat(self.labels)[keep]
        loss = dim_zero_cat(self.loss)[keep].sum() / dim_zero_cat(self.weight)[keep].sum()
        k = self.num_classes
        if self.multilabel:
            values = {
                "acc": multilabel_exact_match(probs, labels, k),
                "balanced_acc": multilabel_accuracy(probs, labels, k, average="macro"),
                "f1_macro": multilabel_f1_score(probs, labels, k, average="macro"),
                "auroc": multilabel_auroc(probs, labels, k, average="macro"),
            }
        else:
            values = {
                "acc": multiclass_accuracy(probs, labels, k, average="micro"),
                "balanced_acc": multiclass_accuracy(probs, labels, k, average="macro"),
                "f1_macro": multiclass_f1_score(probs, labels, k, average="macro"),
                "auroc": multiclass_auroc(probs, labels, k, average="macro"),
            }
        values["loss"] = loss.float()
        return {f"{self.prefix}{name}": value for name, value in values.items()}


class ClassifierModule(pl.LightningModule):
    """Trains any image classifier on batches of {"image", "label", ...} dicts.

    The network, optimizer and schedule are injected (Hydra builds them from conf/module/), so
    the same module trains ViTs and CNNs with every grid row. The module resolves its own
    `class_weights` ("balanced": from `train_labels`, the data module's training labels) and
    `init_from` (the trained network of an earlier run, head included). Metrics are
    torchmetrics objects: they accumulate over the epoch and sync across DDP ranks; validation
    and test count each image once (`SplitMetrics`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: ScheduleFactory | Mapping | None = None,
        num_classes: int = 2,
        class_weights: Sequence[float] | str | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
        multilabel: bool = False,
        objective: SupervisedObjective | None = None,
        init_from: str | None = None,
        train_labels: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        if init_from:  # a trained network of this task, head included (ATCON unsupervised)
            load_init_from(net, init_from)
        class_weights = resolve_class_weights(class_weights, train_labels, num_classes)
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"module.class_weights has {len(class_weights)} entries but the dataset has "
                f"{num_classes} classes."
            )
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "class_weights": (None if class_weights is None
                                  else [float(w) for w in class_weights]),
                "label_smoothing": float(label_smoothing),
                "compile": bool(compile),
                "multilabel": bool(multilabel),
                "objective": (objective or SupervisedObjective()).hparams(),
            }
        )
        # what a training step optimises (conf/objective/): supervised, or ATCON's modes
        self.objective = objective or SupervisedObjective()
        if compile and self.objective.second_order:
            raise ConfigError(
                f"module.compile=true cannot train {self.objective.label()}: its loss "
                "differentiates gradients again (create_graph), which torch.compile does not "
                "support; set module.compile=false."
            )
        self.net = net
        self.optimizer_factory = optimizer
        # scheduler=none composes a node without _target_ (empty, or only a dataset's defaults
        # such as warmup), which Hydra leaves a mapping: a constant learning rate
        self.scheduler_factory = None if isinstance(scheduler, Mapping) else scheduler
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.multilabel = bool(multilabel)
        if self.multilabel:
            if label_smoothing:
                raise ConfigError("module.label_smoothing is for single-label datasets; "
                                  "set it to 0 for multi-label.")
            # class weights weigh each class's positives (BCE pos_weight)
            self.criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=weight)
            self.train_acc = MultilabelExactMatch(num_classes)
        else:
            self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
            self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        # each image once, also under DDP (a padded DistributedSampler repeats a few)
        self.val_metrics = SplitMetrics(num_classes, "val/", self.multilabel)
        self.test_metrics = SplitMetrics(num_classes, "test/", self.multilabel)
        self._compile = compile

    def setup(self, stage: str) -> None:
        """Before the strategy wraps the network: DDP settings that depend on the objective and
        the network (xai_bench.modules.distributed); an objective that trains on unlabeled images
        gets them paired with the labelled ones, and the sizes of both (ATCON's alternating
        share). Without a data module (plain loaders) such an objective fails at its first step."""
        if stage != "fit":
            return
        adapt_ddp_strategy(self.trainer.strategy, self.net, self.objective)
        data = self.trainer.datamodule
        if self.objective.uses_unlabeled and isinstance(data, UnlabeledPairing):
            data.pair_unlabeled = True  # training batches: {"labelled", "unlabeled"} pairs
            self.objective.bind(*data.train_sizes())

    def configure_model(self) -> None:
        if self._compile and not getattr(self, "_compiled", False):
            self.net = torch.compile(self.net)
            self._compiled = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        target = batch["label"].float() if self.multilabel else batch["label"]
        loss = self.criterion(logits.float(), target)
        return loss, logits

    def supervised_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The supervised loss of a labelled training batch; updates and logs training accuracy."""
        loss, logits = self._shared_step(batch)
        self.train_acc(logits.detach(),
                       batch["label"].long() if self.multilabel else batch["label"])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch["label"].shape[0])
        return loss, logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.objective.training_loss(self, batch, self.global_step)
        batch_size = labelled_part(batch)["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
        return loss

    def per_image_loss(self, logits: torch.Tensor,
                       labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_i, weight_i) per image with sum(loss_i) / sum(weight_i) = the criterion's mean:
        cross-entropy weighs image i by its class weight, BCE averages over the K outputs."""
        logits = logits.float()
        if self.multilabel:
            terms = F.binary_cross_entropy_with_logits(
                logits, labels.float(), pos_weight=self.criterion.pos_weight, reduction="none"
            )
            return terms.sum(dim=-1), torch.full_like(terms[:, 0], terms.shape[-1])
        weight = self.criterion.weight
        loss = F.cross_entropy(logits, labels, weight=weight, reduction="none",
                               label_smoothing=self.criterion.label_smoothing)
        return loss, (torch.ones_like(loss) if weight is None else weight[labels])

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: SplitMetrics) -> None:
        logits = self(batch["image"]).float()
        loss, weight = self.per_image_loss(logits, batch["label"])
        probs = logits.sigmoid() if self.multilabel else logits.softmax(dim=-1)
        ids = batch.get("index")
        if ids is None:  # a dataset without image rows: every row counts (-1: never merged)
            if self._trainer is not None and self.trainer.world_size > 1:
                rank_zero_warn("validation/test batches carry no 'index' (every xai_bench dataset "
                               "returns one): images DDP's padding repeats are counted twice.")
            ids = torch.full_like(loss, -1, dtype=torch.long)
        metrics.update(ids, probs, batch["label"], loss, weight)

    def _log_split(self, metrics: SplitMetrics) -> None:
        """Log a split's metrics: already gathered and identical on every rank (`max` syncs
        them exactly; a mean over ranks could round)."""
        values = metrics.compute()
        metrics.reset()
        loss_key = f"{metrics.prefix}loss"
        if loss_key in values:
            self.log(loss_key, values.pop(loss_key), prog_bar=True, sync_dist=True, reduce_fx="max")
        self.log_dict(values, sync_dist=True, reduce_fx="max")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_split(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_split(self.test_metrics)

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False,
                 on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        interval = self.scheduler_factory.interval
        total = (
            self.trainer.max_epochs
            if interval == "epoch"
            else int(self.trainer.estimated_stepping_batches)
        )
        if total is None or total < 1:
            raise ConfigError(
                "the cosine schedule needs a finite trainer.max_epochs (T_max = max epochs)."
            )
        scheduler = self.scheduler_factory(optimizer=optimizer, total=total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
