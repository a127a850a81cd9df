"""The study grid composes from `dataset=D init=I`, and every value stays overridable."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO_ROOT, run_cli
from omegaconf import OmegaConf

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


@pytest.mark.parametrize("init,file", [
    ("sup", "vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors"),
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
                                   "logger", "callbacks", "debug", "experiment", "objective"])
def test_every_option_of_every_group_composes(compose_cfg, group: str) -> None:
    options = sorted(p.stem for p in (REPO_ROOT / "conf" / group).glob("*.yaml"))
    assert options, group
    for option in options:
        # evaluation experiments belong to `python -m xai_bench.evaluate`
        if option.endswith("_eval"):
            cfg = compose_cfg(f"{group}={option}", "ckpt=x.ckpt", "train_sweep=x",
                              config_name="evaluate")
        else:
            cfg = compose_cfg(f"{group}={option}")
        assert cfg.hydra.runtime.choices[group] == option


def test_cli_cfg_job_prints_the_row(tmp_path) -> None:
    """What a user types: `python -m xai_bench.train dataset=kvasir init=dino --cfg job`."""
    proc = run_cli(["xai_bench.train", "dataset=kvasir", "init=dino", "--cfg", "job"],
                   cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.0012" in proc.stdout
    assert "max_epochs: 25" in proc.stdout


def test_grid_configs_are_generated_from_the_csv(tmp_path) -> None:
    """conf/grid is exactly what scripts/make_grid_configs.py writes from the study's CSV."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_grid",
                                                  REPO_ROOT / "scripts" / "make_grid_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.write_grid(DATA_DIR / "seed_grid.csv", tmp_path):
        assert path.read_text() == (REPO_ROOT / "conf" / "grid" / path.name).read_text()


def test_early_stopping_option_builds_the_callback(compose_cfg) -> None:
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from xai_bench.utils.instantiate import instantiate_callbacks

    cfg = compose_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=3",
                      "paths.output_dir=/tmp/x")
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

    cfg = compose_cfg("metric=[localisation,faithfulness,sanity]", "ckpt=x.ckpt",
                      config_name="evaluate")
    keys = set(cfg.metric)
    assert {"pointing_game", "iou", "pixel_iou", "relevance_mass", "relevance_rank",
            "top_k_intersection", "auc", "attribution_localisation", "aopc",
            "max_sensitivity", "haas", "deletion_insertion", "mprt"} == keys
    for key, node in cfg.metric.items():
        metric = hydra.utils.instantiate(node)(key=key)
        assert metric.key == key


def test_dataset_config_can_set_module_keys(compose_cfg) -> None:
    """The survey weighted ISIC's classes: a dataset config's module keys must survive
    composition."""
    assert compose_cfg("dataset=isic2020").module.class_weights == "balanced"
    assert compose_cfg("dataset=isic2020", "module.class_weights=null").module.class_weights is None
    assert compose_cfg("dataset=pascal_voc").module.multilabel is True
    assert compose_cfg().module.multilabel is False


# --- the study's experiments as sweeps --------------------------------------------------------

def _sweep_jobs(params) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of `hydra.sweeper.params` (one override list each)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(
        [f"{key}={value}" for key, value in params.items()])
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def test_study_train_sweeps_the_16_grid_rows(compose_cfg) -> None:
    params = compose_cfg("experiment=study_train").hydra.sweeper.params
    jobs = _sweep_jobs(params)
    assert len(jobs) == 16
    rows = {(r["dataset"], r["init"]): r
            for r in csv.DictReader((DATA_DIR / "seed_grid.csv").open())}
    for job in jobs:
        cfg = compose_cfg("experiment=study_train", *job)
        row = rows[(cfg.dataset.name, cfg.init.name)]
        assert cfg.model.arch == "vit_base_patch16_224"
        assert cfg.optimizer.name == row["optimizer"]
        assert float(cfg.optimizer.lr) == pytest.approx(float(row["lr"]))
        assert int(cfg.trainer.max_epochs) == int(row["epochs"])
        assert "study" in cfg.tags
    # the stand-in keeps every dataset's name and grid row, on synthetic data and the tiny ViT
    cfg = compose_cfg("experiment=study_train", "debug=standin", "dataset=duke", "init=mae")
    assert (cfg.dataset._target_ == "xai_bench.data.standin_datamodule"
            and cfg.dataset.name == "duke")
    assert cfg.model.depth == 2 and cfg.init.pretrained is False
    assert float(cfg.optimizer.lr) == pytest.approx(float(rows[("duke", "mae")]["lr"]))


def test_known_truth_sweeps_rules_models_and_seeds(compose_cfg) -> None:
    """experiment=known_truth: 4 decision rules x ViT / CNN x 2 seeds, each run named by its
    condition (one dict-valued sweep axis keeps the rule and its strength together)."""
    from xai_bench.tracking.resolvers import register_resolvers

    register_resolvers()
    jobs = _sweep_jobs(compose_cfg("experiment=known_truth").hydra.sweeper.params)
    assert len(jobs) == 16
    seen = set()
    for job in jobs:
        cfg = compose_cfg("experiment=known_truth", *job)
        shortcut = cfg.dataset.shortcut
        assert shortcut.enabled and cfg.dataset.num_decorrelated == 400
        seen.add((shortcut.rule, float(shortcut.strength) if shortcut.rule == "both" else None,
                  cfg.model.arch, cfg.seed))
        assert cfg.run_name.startswith(f"synthetic-{cfg.model.arch}-")
    assert {(rule, strength) for rule, strength, _, _ in seen} == {
        ("lesion", None), ("both", 0.99), ("both", 1.0), ("marker", None)}
    assert {arch for _, _, arch, _ in seen} == {"vit_tiny_patch16_224", "resnet10t"}
    assert len(seen) == 16
    names = {compose_cfg("experiment=known_truth", *job).run_name for job in jobs}
    assert len(names) == 16 and "synthetic-resnet10t-both0.99-s2" in names


@pytest.fixture
def resolvers() -> None:
    from xai_bench.tracking.resolvers import register_resolvers

    register_resolvers()  # ${xai.train_runs:...}


def _fake_training_run(folder: Path, *, checkpoint: bool = True, task: str = "train") -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"task_name: {task}\n")
    if checkpoint:
        (folder / "checkpoints" / "best.ckpt").write_bytes(b"")
    return folder


def test_study_eval_sweeps_every_checkpoint_of_a_training_sweep(compose_cfg, resolvers,
                                                                tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    sweep = tmp_path / "train sweep"  # a space: the sweep value must quote paths
    runs = [_fake_training_run(sweep / name)
            for name in ("0_kvasir-dino-sgd-s42", "10_mura-mae-sgd-s42", "2_duke-sup-sgd-s42")]
    _fake_training_run(sweep / "3_crashed", checkpoint=False)
    _fake_training_run(sweep / "4_eval-run", task="evaluate")
    cfg = compose_cfg("experiment=study_eval", f"train_sweep={sweep}", "ckpt=x.ckpt",
                      config_name="evaluate")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    jobs = _sweep_jobs(params)
    assert len(jobs) == 3  # one job per checkpoint, explaining the three methods
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    # what each job's `ckpt=` override gives the job: the whole path, spaces included
    ckpts = {parser.parse_override(o).value() for job in jobs for o in job if o.startswith("ckpt=")}
    assert ckpts == {str(p.resolve()) for p in runs}
    assert list(cfg.methods) == ["gradcam_study", "attention", "chefer"]
    assert all(node.target == 1 for node in cfg.methods.values()) and cfg.split == "roi"
    assert list(cfg.metric) == ["pointing_game", "iou"]


def test_study_eval_without_training_runs_says_what_to_pass(compose_cfg, resolvers,
                                                            tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from xai_bench.utils.errors import ConfigError

    cfg = compose_cfg("experiment=study_eval", f"train_sweep={tmp_path}", "ckpt=x.ckpt",
                      config_name="evaluate")
    with pytest.raises(Exception) as info:
        OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    cause = info.value
    while cause is not None and not isinstance(cause, ConfigError):
        cause = cause.__cause__ or cause.__context__
    assert (cause is not None and "no finished training run" in str(cause)
            and "train_sweep=" in str(cause))


def test_companion_study_sweeps_compose(compose_cfg) -> None:
    faithfulness = _sweep_jobs(compose_cfg("experiment=faithfulness_train").hydra.sweeper.params)
    assert len(faithfulness) == 4 * 2
    for job in faithfulness:
        cfg = compose_cfg("experiment=faithfulness_train", *job)
        assert cfg.model.head == "flatten" and cfg.model.arch in ("resnet50", "vgg19")
    survey = _sweep_jobs(
        compose_cfg("experiment=survey_train", "dataset=isic2020").hydra.sweeper.params)
    assert len(survey) == 7 * 4
    seen = set()
    for job in survey:
        cfg = compose_cfg("experiment=survey_train", "dataset=isic2020", *job)
        seen.add((cfg.model.arch, cfg.model.get("attention"), float(cfg.dataset.low_data.fraction)))
        assert float(cfg.optimizer.lr) == 1e-6 and cfg.dataset.batch_size == 32 and cfg.seed == 42
        assert cfg.module.class_weights == "balanced"
    assert (("resnet50", "cbam", 0.01) in seen and ("densenet121", "se", 1.0) in seen
            and ("deit_tiny_patch16_224", None, 0.5) in seen)
    assert len(seen) == 28
    cfg = compose_cfg("experiment=faithfulness_eval", "train_sweep=x", "ckpt=x.ckpt",
                      config_name="evaluate")
    assert set(cfg.metric) >= {"aopc", "max_sensitivity", "haas"} and cfg.split == "test"


DATASETS = sorted(p.stem for p in (REPO_ROOT / "conf" / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("name", DATASETS)
def test_shared_transforms_compose_what_each_dataset_had(compose_cfg, name: str) -> None:
    """conf/transforms/ replaced twelve copies of the albumentations chain: every dataset's composed
    `dataset.transforms` (interpolations unresolved, key order included) is the one captured from
    the per-dataset configs before (tests/data/transforms_before.json), and stays the last key of
    `dataset`, where config.yaml has always had it."""
    before = json.loads((DATA_DIR / "transforms_before.json").read_text())
    assert set(before) == set(DATASETS)
    dataset = compose_cfg(f"dataset={name}").dataset
    composed = OmegaConf.to_container(dataset.transforms, resolve=False)
    assert json.dumps(composed) == json.dumps(before[name])
    assert list(dataset)[-1] == "transforms"


def test_a_dataset_can_select_the_other_transforms(compose_cfg) -> None:
    cfg = compose_cfg("dataset=kvasir", "transforms@dataset.transforms=resize")
    assert OmegaConf.to_container(cfg.dataset.transforms) == OmegaConf.to_container(
        compose_cfg("dataset=aptos2019").dataset.transforms)
