"""A run's console shows the config tree, progress bars and our summaries, not the libraries'
noise: Lightning's tips and empty device report, torch's LeafSpec deprecation, W&B's warning
about the retired `anonymous` setting (xai_bench.utils.quiet). Real warnings still show."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from omegaconf import OmegaConf

from xai_bench.utils.instantiate import instantiate_loggers
from xai_bench.utils.quiet import (
    LIGHTNING_LOGGERS,
    DropLibraryNoise,
    drop_retired_wandb_settings,
    silence_library_noise,
)

NOISE = ("litlogger", "litmodels", "LeafSpec", "anonymous",
         "GPU available: False", "TPU available: False")

TIPS = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
    "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics and "
    "artifacts automatically to the Lightning Experiments platform.",
    "💡 Tip: For seamless cloud uploads and versioning, try installing "
    "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, which syncs "
    "automatically with the Lightning model registry.",
)


@pytest.fixture
def silenced() -> Iterator[None]:
    """silence_library_noise() for one test; the loggers' filters and the warning filters are
    restored afterwards."""
    before = {name: list(logging.getLogger(name).filters) for name in LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        silence_library_noise()
        yield
    for name, filters in before.items():
        logging.getLogger(name).filters[:] = filters


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _logged(name: str, *messages: str) -> list[str]:
    """What reaches a handler of logger `name` when each message is logged there at INFO."""
    logger = logging.getLogger(name)
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for message in messages:
            logger.info(message)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.messages


@pytest.mark.parametrize("name", LIGHTNING_LOGGERS)
def test_lightning_noise_is_dropped_and_the_rest_kept(silenced: None, name: str) -> None:
    kept = [
        "GPU available: True (cuda), used: True",  # says something: stays
        "Restoring states from the checkpoint path at run/checkpoints/best.ckpt",
        "💡 Tip: a tip that is not an advertisement",
    ]
    noise = [*TIPS, "GPU available: False, used: False", "TPU available: False, using: 0 TPU cores"]
    assert _logged(name, *noise, *kept) == kept


def test_silencing_twice_adds_one_filter(silenced: None) -> None:
    silence_library_noise()
    for name in LIGHTNING_LOGGERS:
        assert sum(isinstance(f, DropLibraryNoise) for f in logging.getLogger(name).filters) == 1


def test_leafspec_deprecation_is_ignored_other_warnings_are_not() -> None:
    from pytorch_lightning.utilities._pytree import _tree_flatten  # builds torch's LeafSpec()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_library_noise()
        _tree_flatten(1.0)
        leafspec = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn(leafspec, FutureWarning, stacklevel=1)
        warnings.warn("a real deprecation", FutureWarning, stacklevel=1)
        warnings.warn("GPU available but not used.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real deprecation", "GPU available but not used."]


def test_wandb_logger_no_longer_passes_the_retired_anonymous_setting(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    cfg = OmegaConf.create({"wandb": {"_target_": "pytorch_lightning.loggers.WandbLogger",
                                      "offline": True, "save_dir": str(tmp_path)}})
    (logger,) = instantiate_loggers(cfg)
    assert "anonymous" not in logger._wandb_init  # W&B warns on any value it is handed
    assert logger._wandb_init["mode"] == "offline"  # the rest is as it was
    # anonymous logging the user asked for stays asked for
    asked = WandbLogger(offline=True, save_dir=str(tmp_path), anonymous=True)
    assert drop_retired_wandb_settings(asked)._wandb_init["anonymous"] == "allow"
    csv = CSVLogger(tmp_path)
    assert drop_retired_wandb_settings(csv) is csv


@pytest.mark.slow
def test_train_and_evaluate_print_no_library_noise(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # W&B not silenced here (the tests' default), so that its warnings would show
    loud = {"WANDB_SILENT": "false"}
    train = run_cli(["xai_bench.train", "debug=tiny", "dataset.num_train=64", "dataset.num_val=32",
                     "dataset.num_test=32", "logger=wandb", "print_config=false",
                     f"hydra.run.dir={run}"], cwd=tmp_path, timeout=600, env=loud)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-5000:]
    evaluate = run_cli(["xai_bench.evaluate", f"ckpt={run}", "method=gradcam", "max_images=8",
                        "overlays=1", "baselines=[]", "print_config=false",
                        f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path, timeout=600, env=loud)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-5000:]
    output = "\n".join((train.stdout, train.stderr, evaluate.stdout, evaluate.stderr))
    assert "wandb: Tracking run with wandb" in output  # W&B was heard
    for noise in NOISE:
        assert noise not in output, noise
    # the one-line summaries stay
    assert "done (best epoch" in output and "Run folder:" in output
    assert "evaluation:" in output and "gradcam: pointing_game" in output
