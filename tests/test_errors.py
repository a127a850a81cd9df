"""Failures a user can fix get one clear message; unsafe checkpoints are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import run_cli

pytestmark = pytest.mark.slow


def _fails_cleanly(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_missing_dataset_names_the_folder_and_how_to_prepare(tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.train", "dataset=kvasir"], cwd=tmp_path, timeout=180)
    err = _fails_cleanly(proc)
    assert str(tmp_path / "data" / "kvasir") in err
    assert "Kvasir v2" in err and "paths.data_dir" in err
    assert err.count("error:") == 1


def test_missing_weights_file_names_file_and_folder(tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.train", "init=dino", "debug=tiny"], cwd=tmp_path, timeout=180)
    err = _fails_cleanly(proc)
    assert "dino_vitbase16_pretrain.pth" in err
    assert str(tmp_path / "weights") in err
    assert "init.path=" in err


class _Payload:
    """Unpickling this would run code: the marker file proves whether it happened."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_with_pickled_object_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "payload": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with evil.open("wb") as f:
            pickle.dump(payload, f)
    proc = run_cli(["xai_bench.train", "debug=tiny", f"ckpt_path={evil}"], cwd=tmp_path,
                   timeout=180)
    err = _fails_cleanly(proc)
    assert "evil.ckpt" in err and "refused" in err.lower()
    assert not marker.exists()


def test_bad_config_value_fails_clearly(tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.train", "debug=tiny", "optimizer.name=rmsprop"], cwd=tmp_path,
                   timeout=180)
    err = _fails_cleanly(proc)
    assert "rmsprop" in err


def test_a_missing_mandatory_value_names_the_key() -> None:
    """dataset=folder without dataset.num_classes used to end in OmegaConf's error chain."""
    from omegaconf import OmegaConf

    from xai_bench.utils.errors import ConfigError
    from xai_bench.utils.task import user_error

    cfg = OmegaConf.create({"dataset": {"num_classes": "???"},
                            "model": {"num_classes": "${dataset.num_classes}"}})
    for read in (lambda: cfg.model.num_classes, lambda: cfg.dataset.num_classes):
        try:
            read()
        except Exception as err:  # noqa: BLE001 - the error under test
            found = user_error(err)
        else:
            raise AssertionError("reading a ??? value did not raise")
        assert isinstance(found, ConfigError)
        assert str(found).startswith("dataset.num_classes must be set"), str(found)
        assert "dataset.num_classes=<value>" in str(found)
