"""Multi-device paths, run with CPU processes (gloo): exact val/test metrics under DDP, ATCON
under DDP, BatchNorm models under DDP on CPU, and the data module's own distributed samplers.

The DDP runs are tiny (debug=tiny, 1-2 epochs, a few dozen images) and bounded by timeouts.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import run_cli
from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from pytorch_lightning.trainer.states import RunningStage
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler

from xai_bench.data import SyntheticDataModule
from xai_bench.models import build_model
from xai_bench.modules import ClassifierModule, build_optimizer, classification_metrics
from xai_bench.modules.classifier import SplitMetrics
from xai_bench.modules.consistency import consistency_loss
from xai_bench.modules.distributed import adapt_ddp_strategy
from xai_bench.modules.objectives import ATCONObjective, SupervisedObjective
from xai_bench.tracking.records import TrainingRecord

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
# odd split sizes: a 2-rank DistributedSampler pads each with one repeated image
TINY = [
    "debug=tiny",
    "logger=none",
    "dataset.num_train=64",
    "dataset.num_val=33",
    "dataset.num_test=35",
]


def _train(cwd: Path, out: Path, *overrides: str, timeout: float = 600):
    proc = run_cli(
        ["xai_bench.train", *TINY, f"hydra.run.dir={out}", *overrides], cwd=cwd, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, TrainingRecord.read(out)


# --------------------------------------------------------------------------- samplers (11)


def _rank_trainer(monkeypatch: pytest.MonkeyPatch, rank: int) -> pl.Trainer:
    """A 2-process DDP trainer as rank `rank` sees it (nothing is launched: LOCAL_RANK set as a
    launcher sets it)."""
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    # building it sets Lightning's process-wide rank: restore it after the test
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            strategy="ddp",
            accelerator="cpu",
            devices=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
    assert trainer.global_rank == rank and trainer.world_size == 2
    return trainer


def _prepared_orders(
    monkeypatch: pytest.MonkeyPatch, rank: int, shuffle_seed: int = 123, **data
) -> dict:
    """The training loaders of one rank after Lightning's own preparation, and their samplers."""
    trainer = _rank_trainer(monkeypatch, rank)
    dm = SyntheticDataModule(
        img_size=16,
        num_train=20,
        num_val=7,
        num_test=7,
        batch_size=4,
        shuffle_seed=shuffle_seed,
        pair_unlabeled=True,
        **data,
    )
    dm.trainer = trainer  # what trainer.fit(datamodule=dm) does
    prepared = {}
    for name, loader in dm.train_dataloader().items():
        ready = trainer._data_connector._prepare_dataloader(
            loader, shuffle=True, mode=RunningStage.TRAINING
        )
        prepared[name] = ready
    val = trainer._data_connector._prepare_dataloader(
        dm.val_dataloader(), shuffle=False, mode=RunningStage.VALIDATING
    )
    return {"train": prepared, "val": val}


def _order(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)  # what Lightning's fit loop calls every epoch
    return list(iter(loader.sampler))


def test_ddp_loaders_keep_their_own_seeds_and_shard_disjointly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ranks = [_prepared_orders(monkeypatch, rank) for rank in (0, 1)]
    for prepared in ranks:
        for loader in prepared["train"].values():
            assert isinstance(loader.sampler, DistributedSampler)
    for epoch in (0, 1, 2):
        labelled = [_order(r["train"]["labelled"], epoch) for r in ranks]
        unlabeled = [_order(r["train"]["unlabeled"], epoch) for r in ranks]
        for rank in (0, 1):
            # no unlabeled pool: the same 20 images, but not the same batches
            assert labelled[rank] != unlabeled[rank]
            assert sum(a == b for a, b in zip(labelled[rank], unlabeled[rank], strict=True)) < 5
        for orders in (labelled, unlabeled):
            assert len(orders[0]) == len(orders[1]) == 10
            assert not set(orders[0]) & set(orders[1])  # disjoint shares ...
            assert set(orders[0]) | set(orders[1]) == set(range(20))  # ... covering every image
        # the labelled order is the one the data module's seed asks for
        for rank in (0, 1):
            intended = DistributedSampler(
                range(20), num_replicas=2, rank=rank, shuffle=True, seed=123
            )
            intended.set_epoch(epoch)
            assert labelled[rank] == list(intended)
    # set_epoch: a new order each epoch, the same order again for the same epoch (a resume)
    loader = ranks[0]["train"]["labelled"]
    assert _order(loader, 0) != _order(loader, 1)
    assert _order(loader, 1) == _order(loader, 1)


def test_ddp_shuffle_seed_changes_the_order_and_val_is_sharded_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = _prepared_orders(monkeypatch, 0, shuffle_seed=1)
    b = _prepared_orders(monkeypatch, 0, shuffle_seed=2)
    assert _order(a["train"]["labelled"], 0) != _order(b["train"]["labelled"], 0)
    val = a["val"].sampler
    assert isinstance(val, DistributedSampler) and not val.shuffle
    assert list(val) == [
        0,
        2,
        4,
        6,
    ]  # 7 images, rank 0 of 2: padded by one, scored once (finding 6)


def test_low_data_pool_is_sharded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = [_prepared_orders(monkeypatch, rank, low_data={"per_class": 4}) for rank in (0, 1)]
    labelled = [_order(r["train"]["labelled"], 0) for r in ranks]
    unlabeled = [_order(r["train"]["unlabeled"], 0) for r in ranks]
    assert [len(o) for o in labelled] == [4, 4] and not set(labelled[0]) & set(labelled[1])
    assert [len(o) for o in unlabeled] == [6, 6] and not set(unlabeled[0]) & set(unlabeled[1])


def test_single_process_loaders_are_unchanged() -> None:
    dm = SyntheticDataModule(
        img_size=16, num_train=20, num_val=7, num_test=7, batch_size=4, shuffle_seed=123
    )
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler)
    assert (
        list(loader.sampler)
        == torch.randperm(20, generator=torch.Generator().manual_seed(123)).tolist()
    )


# --------------------------------------------------------------------------- split metrics (6)


@pytest.mark.parametrize("multilabel", [False, True])
def test_split_metrics_count_each_image_once(multilabel: bool) -> None:
    """Rows of two 'ranks' whose padded shares repeat images 0 and 1 score like the unique rows,
    and like the torchmetrics collection the module used before; the loss is the criterion's
    mean over the split (class weights, label smoothing, BCE's pos_weight included)."""
    g = torch.Generator().manual_seed(0)
    n, k = 11, 3
    logits = torch.randn(n, k, generator=g)
    labels = (
        (torch.rand(n, k, generator=g) > 0.5).long()
        if multilabel
        else torch.randperm(n, generator=g) % k
    )
    module = ClassifierModule(
        nn.Linear(2, k),
        optimizer=partial(build_optimizer, name="adamw", lr=1e-3),
        num_classes=k,
        class_weights=[0.5, 2.0, 1.3],
        multilabel=multilabel,
        label_smoothing=0.0 if multilabel else 0.1,
    )
    loss, weight = module.per_image_loss(logits, labels)
    expected_loss = module.criterion(logits, labels.float() if multilabel else labels)
    assert float(loss.sum() / weight.sum()) == pytest.approx(float(expected_loss), rel=1e-6)
    probs = logits.sigmoid() if multilabel else logits.softmax(-1)
    ids = torch.arange(n)

    def scored(rows: list[torch.Tensor]) -> dict[str, float]:
        metric = SplitMetrics(k, "val/", multilabel)
        for r in rows:
            metric.update(ids[r], probs[r], labels[r], loss[r], weight[r])
        return {key: float(v) for key, v in metric.compute().items()}

    unique = scored([torch.arange(n)])
    # rank 0 takes 0, 2, ..., 10; rank 1 takes 1, 3, ..., 9 and pads with 0; a third batch repeats 1
    padded = scored([torch.arange(0, n, 2), torch.tensor([*range(1, n, 2), 0]), torch.tensor([1])])
    assert padded == unique
    reference = classification_metrics(k, "val/", multilabel)
    reference.update(probs, labels)
    for key, value in reference.compute().items():
        assert unique[key] == pytest.approx(float(value), rel=1e-6), key
    assert unique["val/loss"] == pytest.approx(float(expected_loss), rel=1e-6)
    counted_twice = scored([torch.arange(n), torch.tensor([0, 1])])  # what the old metrics did
    assert counted_twice == unique  # ... and now does not


# --------------------------------------------------------------------------- strategy (9, 10)


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _ddp(device: str) -> DDPStrategy:
    strategy = DDPStrategy(parallel_devices=[torch.device(device, 0)])
    strategy._layer_sync = TorchSyncBatchNorm()  # what trainer.sync_batchnorm=true sets
    return strategy


def test_sync_batchnorm_only_on_gpus_and_never_for_second_order_objectives() -> None:
    kept = _ddp("cuda")
    assert adapt_ddp_strategy(kept, _BNNet(), SupervisedObjective()) == {
        "sync_batchnorm_off": False,
        "find_unused_parameters": False,
    }
    assert kept._layer_sync is not None

    cpu = _ddp("cpu")
    assert adapt_ddp_strategy(cpu, _BNNet(), SupervisedObjective())["sync_batchnorm_off"]
    assert cpu._layer_sync is None

    atcon = _ddp("cuda")
    with pytest.warns(
        UserWarning,
        match=r"sync_batchnorm is off for objective=atcon mode=combining: .* "
        "SyncBatchNorm does not support",
    ):
        assert adapt_ddp_strategy(atcon, _BNNet(), ATCONObjective(mode="combining"))[
            "sync_batchnorm_off"
        ]
    assert atcon._layer_sync is None

    no_bn = _ddp("cpu")
    adapt_ddp_strategy(no_bn, nn.Linear(2, 2), SupervisedObjective())  # nothing to synchronise
    assert no_bn._layer_sync is not None


@pytest.mark.parametrize(
    ("mode", "unused"),
    [("supervised", False), ("combining", False), ("unsupervised", True), ("alternating", True)],
)
def test_find_unused_parameters_for_atcon_modes_that_need_it(mode: str, unused: bool) -> None:
    strategy = _ddp("cpu")
    changed = adapt_ddp_strategy(strategy, nn.Linear(2, 2), ATCONObjective(mode=mode))
    assert changed["find_unused_parameters"] is unused
    assert strategy._ddp_kwargs.get("find_unused_parameters", False) is unused
    single = SingleDeviceStrategy(torch.device("cpu"))  # not DDP: untouched
    assert adapt_ddp_strategy(single, nn.Linear(2, 2), ATCONObjective(mode=mode)) == {
        "sync_batchnorm_off": False,
        "find_unused_parameters": False,
    }


def test_consistency_loss_leaves_the_classifier_bias_without_gradient() -> None:
    """Why DDP must look for unused parameters: the CAMs depend on d logit / d features."""
    torch.manual_seed(0)
    net = build_model(
        arch="vit_tiny_patch16_224",
        num_classes=2,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        init={"name": "random", "pretrained": False},
    )
    consistency_loss(net, torch.randn(4, 3, 32, 32)).loss.backward()
    assert net.head.bias.grad is None
    assert net.head.weight.grad is not None and net.blocks[0].attn.qkv.weight.grad is not None


def test_classifier_setup_adapts_the_strategy() -> None:
    module = ClassifierModule(
        _BNNet(),
        optimizer=partial(build_optimizer, name="adamw", lr=1e-3),
        num_classes=2,
        objective=ATCONObjective(mode="alternating"),
    )
    strategy = _ddp("cpu")
    module._trainer = type("T", (), {"strategy": strategy, "datamodule": None})()
    module.setup("fit")
    assert strategy._layer_sync is None and strategy._ddp_kwargs["find_unused_parameters"] is True


# --------------------------------------------------------------------------- 2-process runs


@pytest.fixture(scope="module")
def resnet_ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """A 2-process gloo run of a ResNet (BatchNorm) with odd val/test sizes, every batch scored."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "resnet"
    proc, metrics = _train(
        tmp,
        out,
        "model=resnet34",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
        *DDP,
        timeout=900,
    )
    return out, proc.stdout + proc.stderr, metrics


@pytest.mark.slow
def test_ddp_resnet_with_batchnorm_runs_on_cpu(resnet_ddp_run: tuple[Path, str, dict]) -> None:
    out, log, metrics = resnet_ddp_run
    assert metrics.world_size == 2 and (out / "checkpoints" / "best.ckpt").is_file()
    assert (
        "SyncBatchNorm runs only on CUDA devices; on cpu each process normalises with its own"
        in log
    )


@pytest.mark.slow
def test_ddp_val_test_metrics_equal_one_process(
    resnet_ddp_run: tuple[Path, str, dict], tmp_path: Path
) -> None:
    """metrics.json of the 2-rank run (33 val / 35 test images: each rank pads one) equals a
    1-process evaluation of the same checkpoint. Tolerance rel 1e-6: per-image logits may
    differ in the last bit between batch compositions; every count-based metric is exact."""
    out, _, two = resnet_ddp_run
    _, one = _train(
        tmp_path,
        tmp_path / "one",
        "model=resnet34",
        "train=false",
        f"init_from={out}",
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
    )
    assert one.world_size == 1
    for split in ("val", "test"):
        assert (
            set(getattr(two, split))
            == set(getattr(one, split))
            == {"loss", "acc", "balanced_acc", "f1_macro", "auroc"}
        )
        ours, theirs = getattr(one, split), getattr(two, split)
        for name, value in ours.items():
            assert theirs[name] == pytest.approx(value, rel=1e-6, abs=1e-7), (split, name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["unsupervised", "alternating"])
def test_ddp_atcon_modes_train(mode: str, tmp_path: Path) -> None:
    proc, metrics = _train(
        tmp_path, tmp_path / mode, "objective=atcon", f"objective.mode={mode}", *DDP
    )
    assert metrics.world_size == 2 and metrics.epochs_trained == 2
    assert (
        f"objective=atcon mode={mode} leaves some parameters without gradient"
        in proc.stdout + proc.stderr
    )
    assert all(value == value for value in metrics.val.values())  # finite, not NaN
