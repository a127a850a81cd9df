"""The training LightningModule: one network, cross-entropy, the study's classification metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelExactMatch,
    MultilabelF1Score,
)

from xai_bench.modules.objectives import SupervisedObjective, labelled_part
from xai_bench.utils.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def classification_metrics(num_classes: int, prefix: str, multilabel: bool = False) -> MetricCollection:
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


class ClassifierModule(pl.LightningModule):
    """Trains any image classifier on batches of {"image", "label", ...} dicts.

    The network, optimizer and schedule are injected (Hydra builds them), so the same module
    trains ViTs and CNNs with every grid row. Metrics are torchmetrics objects: they accumulate
    over the epoch and sync across DDP ranks.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        num_classes: int = 2,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        compile: bool = False,
        multilabel: bool = False,
        objective: SupervisedObjective | None = None,
    ) -> None:
        super().__init__()
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                f"module.class_weights has {len(class_weights)} entries but the dataset has "
                f"{num_classes} classes."
            )
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "class_weights": None if class_weights is None else [float(w) for w in class_weights],
                "label_smoothing": float(label_smoothing),
                "compile": bool(compile),
                "multilabel": bool(multilabel),
                "objective": (objective or SupervisedObjective()).hparams(),
            }
        )
        # what a training step optimises (conf/objective/): supervised, or ATCON's modes
        self.objective = objective or SupervisedObjective()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.multilabel = bool(multilabel)
        if self.multilabel:
            if label_smoothing:
                raise ConfigError("module.label_smoothing is for single-label datasets; set it to 0 for multi-label.")
            # class weights weigh each class's positives (BCE pos_weight)
            self.criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=weight)
            self.train_acc = MultilabelExactMatch(num_classes)
        else:
            self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
            self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = classification_metrics(num_classes, "val/", self.multilabel)
        self.test_metrics = classification_metrics(num_classes, "test/", self.multilabel)
        self._compile = compile

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

    @property
    def uses_unlabeled(self) -> bool:
        """True when the objective also trains on unlabeled images (the data module pairs them)."""
        return bool(self.objective.uses_unlabeled)

    def supervised_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The supervised loss of a labelled training batch; updates and logs training accuracy."""
        loss, logits = self._shared_step(batch)
        self.train_acc(logits.detach(), batch["label"].long() if self.multilabel else batch["label"])
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss, logits

    def on_fit_start(self) -> None:
        sizes = getattr(self.trainer.datamodule, "train_sizes", None)
        if sizes is not None:
            self.objective.bind(*sizes())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.objective.training_loss(self, batch, self.global_step)
        batch_size = labelled_part(batch)["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        loss, logits = self._shared_step(batch)
        if self.multilabel:
            metrics.update(logits.float().sigmoid(), batch["label"].long())
        else:
            metrics.update(logits.float().softmax(dim=-1), batch["label"])
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["label"].shape[0], sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=False)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        interval = getattr(self.scheduler_factory, "keywords", {}).get("interval", "epoch")
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
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}
