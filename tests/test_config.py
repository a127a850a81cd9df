"""The study grid composes from `dataset=D init=I`, and every value stays overridable."""

from __future__ import annotations

import csv

import pytest
from conftest import DATA_DIR, REPO_ROOT, run_cli

GRID_ROWS = list(csv.DictReader((DATA_DIR / "seed_grid.csv").open()))


def test_grid_has_the_16_study_rows() -> None:
    assert len(GRID_ROWS) == 16
    assert {r["dataset"] for r in GRID_ROWS} == {"cp_child", "duke", "kvasir", "mura"}
    assert {r["init"] for r in GRID_ROWS} == {"random", "sup", "dino", "mae"}
    for row in GRID_ROWS:
        assert (REPO_ROOT / "conf" / "grid" / f"{row['dataset']}_{row['init']}.yaml").is_file()


@pytest.mark.parametrize("row", GRID_ROWS, ids=lambda r: f"{r['dataset']}-{r['init']}")
def test_dataset_x_init_selects_the_grid_row(compose_cfg, row: dict[str, str]) -> None:
    cfg = compose_cfg(f"dataset={row['dataset']}", f"init={row['init']}")
    assert cfg.optimizer.name == row["optimizer"]
    assert cfg.optimizer.lr == pytest.approx(float(row["lr"]))
    assert cfg.optimizer.momentum == pytest.approx(float(row["momentum"]))  # beta1 for Adam
    assert cfg.optimizer.weight_decay == pytest.approx(float(row["weight_decay"]))
    assert cfg.trainer.max_epochs == int(row["epochs"])
    assert cfg.dataset.batch_size == int(row["batch_size"])
    assert cfg.study_row.saved_epoch == int(row["saved_epoch"])
    assert cfg.hydra.runtime.choices.scheduler == row["scheduler"]
    # the study's model and input size
    assert cfg.model.arch == "vit_base_patch16_224"
    assert cfg.dataset.img_size == 224
    assert cfg.dataset.num_classes == 2


def test_command_line_overrides_beat_the_grid(compose_cfg) -> None:
    cfg = compose_cfg("dataset=cp_child", "init=dino", "optimizer=sgd", "optimizer.lr=3e-4",
                      "trainer.max_epochs=3", "dataset.batch_size=8", "model=vit_test")
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.optimizer.weight_decay == pytest.approx(1e-4)  # still the row's
    assert cfg.trainer.max_epochs == 3
    assert cfg.dataset.batch_size == 8
    assert cfg.model.depth == 2


def test_synthetic_default_is_a_tiny_vit_without_a_grid_row(compose_cfg) -> None:
    cfg = compose_cfg()
    assert cfg.dataset.name == "synthetic"
    assert cfg.model.arch == "vit_tiny_patch16_224" and cfg.model.depth == 4
    assert "study_row" not in cfg
    assert cfg.logger.wandb.offline is True


@pytest.mark.parametrize("init,file", [("sup", "vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors"),
                                       ("dino", "dino_vitbase16_pretrain.pth"),
                                       ("mae", "mae_finetuned_vit_base.pth"),
                                       ("mae_pretrain", "vit_base_patch16_224.mae.safetensors")])
def test_init_configs_name_the_study_files(compose_cfg, init: str, file: str) -> None:
    cfg = compose_cfg("dataset=kvasir", f"init={init}")
    assert cfg.init.pretrained is True
    assert cfg.init.file == file
    if init == "mae":
        assert dict(cfg.init.key_map) == {"fc_norm.": "norm."}


@pytest.mark.parametrize("group", ["dataset", "init", "optimizer", "scheduler", "model", "trainer",
                                   "logger", "callbacks", "debug", "experiment"])
def test_every_option_of_every_group_composes(compose_cfg, group: str) -> None:
    options = sorted(p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml"))
    assert options, group
    for option in options:
        cfg = compose_cfg(f"{group}={option}")
        assert cfg.hydra.runtime.choices[group] == option


def test_cli_cfg_job_prints_the_row(tmp_path) -> None:
    """What a user types: `python -m xai_bench.train dataset=kvasir init=dino --cfg job`."""
    proc = run_cli(["xai_bench.train", "dataset=kvasir", "init=dino", "--cfg", "job"], cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.0012" in proc.stdout
    assert "max_epochs: 25" in proc.stdout


def test_grid_configs_are_generated_from_the_csv(tmp_path) -> None:
    """conf/grid is exactly what scripts/make_grid_configs.py writes from the study's CSV."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_grid", REPO_ROOT / "scripts" / "make_grid_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_grid(DATA_DIR / "seed_grid.csv", tmp_path):
        assert path.read_text() == (REPO_ROOT / "conf" / "grid" / path.name).read_text()


def test_early_stopping_option_builds_the_callback(compose_cfg) -> None:
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from xai_bench.utils.instantiate import instantiate_callbacks

    cfg = compose_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=3", "paths.output_dir=/tmp/x")
    callbacks = instantiate_callbacks(cfg.callbacks)
    stopper = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert stopper.patience == 3 and stopper.monitor == "val/loss"
    assert any(isinstance(c, ModelCheckpoint) for c in callbacks)


@pytest.mark.parametrize("group", ["method", "metric"])
def test_every_evaluation_option_composes(compose_cfg, group: str) -> None:
    options = sorted(p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml"))
    assert options, group
    for option in options:
        value = f"[{option}]" if group == "metric" else option
        cfg = compose_cfg(f"{group}={value}", "ckpt=x.ckpt", config_name="evaluate")
        assert cfg.task_name == "evaluate" and cfg.trainer.inference_mode is False


def test_evaluation_metric_groups_build_their_metrics(compose_cfg) -> None:
    import hydra

    cfg = compose_cfg("metric=[localisation,faithfulness,sanity]", "ckpt=x.ckpt", config_name="evaluate")
    keys = set(cfg.metric)
    assert {"pointing_game", "iou", "pixel_iou", "relevance_mass", "relevance_rank", "aopc", "max_sensitivity",
            "haas", "deletion_insertion", "mprt"} == keys
    for key, node in cfg.metric.items():
        metric = hydra.utils.instantiate(node)(key=key)
        assert metric.key == key


def test_dataset_config_can_set_module_keys(compose_cfg) -> None:
    """The survey weighted ISIC's classes: a dataset config's module keys must survive composition."""
    assert compose_cfg("dataset=isic2020").module.class_weights == "balanced"
    assert compose_cfg("dataset=isic2020", "module.class_weights=null").module.class_weights is None
    assert compose_cfg("dataset=pascal_voc").module.multilabel is True
    assert compose_cfg().module.multilabel is False
