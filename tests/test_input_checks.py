"""Input checks before training (issue 12, findings 2 and 8).

2: labels.csv rows, masks/ and rois/ entries and `prepare_folder --csv` rows that lead outside the
   dataset folder (absolute paths, `..`, symlinks pointing out) were opened: training read an
   outside PNG silently, prepare_folder copied it. Now refused in the table check, listed.
8: a mask of the wrong size was reported only at test time, after training; `dataset=kvasir
   init=dino` with neither data nor weights reported only the data. Now the datamodule's check()
   compares every mask's header with its frame, and one preflight message lists every missing input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import run_cli
from PIL import Image

from xai_bench import prepare as prepare_cli
from xai_bench.data import ImageTableDataModule
from xai_bench.data.containment import paths_outside
from xai_bench.modules.preflight import check_inputs
from xai_bench.utils.errors import DatasetNotFoundError, WeightsNotFoundError, XaiBenchError

SIZE = 32


def _png(path: Path, size: tuple[int, int] = (SIZE, SIZE), value: int | None = None,
         seed: int = 0) -> Path:
    """An RGB image (or, with `value`, a single-channel mask) of (width, height) `size`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if value is None:
        array = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    else:
        array = np.full((h, w), value, np.uint8)
    Image.fromarray(array).save(path)
    return path


def _dataset(root: Path, n: int = 12, extra_rows: tuple[str, ...] = ()) -> Path:
    """A canonical dataset with n images (train/val/test in turn) and `extra_rows` image paths."""
    rows = ["image,label,split"]
    for i in range(n):
        _png(root / "images" / f"{i}.png", seed=i)
        rows.append(f"images/{i}.png,{i % 2},{('train', 'val', 'test')[i % 3]}")
    rows += [f"{path},0,train" for path in extra_rows]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _module(root: Path, **kwargs) -> ImageTableDataModule:
    return ImageTableDataModule(name="t", root=root, num_classes=2, img_size=SIZE, num_workers=0,
                                batch_size=4, pin_memory=False, **kwargs)


def _sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path PIL opens from now on (images and masks are read through PIL)."""
    seen: list[str] = []
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        seen.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return seen


# ----------------------------------------------------------------------------- finding 2
def test_rows_leading_outside_the_dataset_are_refused_and_never_read(tmp_path: Path,
                                                                     opened: list[str]) -> None:
    secret = _png(tmp_path / "secret" / "private.png")
    root = tmp_path / "data" / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "link.png").symlink_to(secret)
    bad = ("../../secret/private.png", str(secret), "images/../../../secret/private.png",
           "images/link.png", "/etc/passwd", "images/../../ds/../../secret/private.png",
           "../ds/../../secret/private.png")
    _dataset(root, extra_rows=bad)
    module = _module(root)
    with pytest.raises(DatasetNotFoundError) as err:
        module.check()
    message = str(err.value)
    assert f"{root / 'labels.csv'}: 7 of 19 image paths lead outside the dataset folder" in message
    assert "line 14 '../../secret/private.png', line 15 " in message and message.count("line ") == 5
    assert ", ..." in message and "\n" not in message and "copy those files into it" in message
    assert not any("secret" in p or "passwd" in p for p in opened)
    with pytest.raises(DatasetNotFoundError):  # a failed check is not remembered as passed
        module.check()


def test_paths_inside_stay_allowed_through_symlinked_roots_and_inner_links(tmp_path: Path) -> None:
    real = _dataset(tmp_path / "real" / "ds", extra_rows=(
        "images/alias.png", str(tmp_path / "data" / "ds" / "images" / "1.png")))
    # a link inside the folder
    (real / "images" / "alias.png").symlink_to(real / "images" / "0.png")
    (tmp_path / "data").mkdir()
    # data/ds -> storage elsewhere: the usual cluster setup
    (tmp_path / "data" / "ds").symlink_to(real)
    module = _module(tmp_path / "data" / "ds")
    module.check()
    assert len(module.train_dataset) == 6


def test_containment_resolves_like_the_file_system() -> None:
    assert paths_outside("/data/ds", ["/data/ds/a.png", "/data/ds/x/../b.png", "/data/dsx/c.png",
                                      "/data/ds", "/data/ds/..", "/etc/passwd",
                                      "/data/ds/../ds/d.png"]) == [2, 4, 5]


@pytest.mark.parametrize("folder_name", ["masks", "rois"])
def test_mask_files_and_folders_leading_outside_are_refused(tmp_path: Path, folder_name: str,
                                                            opened: list[str]) -> None:
    outside = tmp_path / "outside"
    _png(outside / "3.png", value=255)
    root = _dataset(tmp_path / "ds")
    (root / folder_name).mkdir()
    (root / folder_name / "3.png").symlink_to(outside / "3.png")
    with pytest.raises(DatasetNotFoundError,
                       match=rf"1 of 1 {folder_name}/ files lead outside the dataset folder "
                             rf".*'{folder_name}/3.png'"):
        _module(root).check()
    (root / folder_name / "3.png").unlink()
    (root / folder_name).rmdir()
    (root / folder_name).symlink_to(outside)  # the whole folder links out
    with pytest.raises(DatasetNotFoundError, match=f"{folder_name}/ files lead outside"):
        _module(root).check()
    assert not any(str(outside) in p for p in opened)


@pytest.mark.slow
def test_training_on_a_table_with_an_outside_row_exits_2_before_anything(tmp_path: Path) -> None:
    secret = _png(tmp_path / "secret" / "private.png")
    _dataset(tmp_path / "data" / "folder", n=24, extra_rows=("../../secret/private.png",))
    before = _sha(tmp_path / "secret")
    run = tmp_path / "run"
    proc = run_cli(["xai_bench.train", "debug=tiny", "dataset=folder", "dataset.num_classes=2",
                    "dataset.class_names=[a,b]", f"dataset.img_size={SIZE}",
                    f"paths.data_dir={tmp_path / 'data'}", "logger=none",
                    f"hydra.run.dir={run}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert (line.startswith("error: ") and "1 of 25 image paths lead outside" in line
            and "'../../secret/private.png'" in line)
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()
    assert _sha(tmp_path / "secret") == before and secret.is_file()


def _raw(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    for i in range(6):
        _png(raw / f"{i}.png", seed=i)
    return raw


@pytest.mark.parametrize("bad", ["../secret/private.png", "{secret}",
                                 "sub/../../secret/private.png", "link.png"])
def test_prepare_folder_csv_refuses_rows_leading_outside_raw(tmp_path: Path, bad: str, capsys,
                                                             opened: list[str]) -> None:
    secret = _png(tmp_path / "secret" / "private.png")
    raw = _raw(tmp_path)
    (raw / "link.png").symlink_to(secret)
    table = tmp_path / "table.csv"
    table.write_text("path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(6))
                     + bad.format(secret=secret) + ",0\n")
    out = tmp_path / "out"
    assert prepare_cli.main(["folder", "--raw", str(raw), "--csv", str(table), "--out",
                             str(out)]) == 2
    printed = capsys.readouterr().out
    assert f"{table}: 1 of 7 paths lead outside --raw" in printed and "line 8 " in printed
    assert not out.exists() and not any("secret" in p for p in opened)
    # absolute paths below --raw remain fine (the documented form)
    table.write_text("path,label\n" + "".join(f"{raw / f'{i}.png'},{i % 2}\n" for i in range(6)))
    assert prepare_cli.main(["folder", "--raw", str(raw), "--csv", str(table), "--out",
                             str(out)]) == 0


def test_prepare_refuses_linked_masks_and_rois_before_writing(tmp_path: Path, capsys) -> None:
    secret = _png(tmp_path / "secret" / "0.png", value=255)
    raw = _raw(tmp_path / "a")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "0.png").symlink_to(secret)
    out = tmp_path / "out"
    assert prepare_cli.main(["folder", "--raw", str(raw.parent), "--out", str(out), "--masks",
                             str(tmp_path / "masks")]) == 2
    assert "1 mask files are symlinks leading outside the mask folder" in capsys.readouterr().out
    (tmp_path / "rois").mkdir()
    (tmp_path / "rois" / "0.png").symlink_to(secret)
    assert prepare_cli.main(["folder", "--raw", str(raw.parent), "--out", str(out), "--rois",
                             str(tmp_path / "rois")]) == 2
    assert "1 ROI files are symlinks leading outside the folder" in capsys.readouterr().out
    assert not out.exists()  # refused before the images were written


# ----------------------------------------------------------------------------- finding 8: masks
def test_wrong_size_masks_fail_in_check_from_headers_only(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(tmp_path / "ds")
    _png(root / "masks" / "0.png", value=255)  # right size
    _png(root / "masks" / "1.png", size=(16, 16), value=255)  # same aspect: resize scales it
    _png(root / "masks" / "2.png", size=(30, 20), value=255)  # another aspect: never usable
    _png(root / "masks" / "3.png", size=(16, 16), value=255)  # a training image's mask
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: pytest.fail("check() decoded pixels"))
    with pytest.raises(XaiBenchError) as err:
        _module(root, mask_size="reject").check()
    message = str(err.value)
    assert message.startswith(f"{root}: 3 ROI masks do not fit their image: ")
    assert ("'masks/1.png 16x16 (image 32x32)'" in message
            and "'masks/3.png 16x16 (image 32x32)'" in message)
    assert ("dataset.mask_size=reject refuses masks of another size" in message
            and "\n" not in message)
    with pytest.raises(XaiBenchError) as err:
        _module(root, mask_size="resize").check()
    assert "1 ROI masks do not fit their image: 'masks/2.png 30x20 (image 32x32)'" in str(err.value)
    assert "the same aspect ratio" in str(err.value)
    (root / "masks" / "2.png").unlink()
    _module(root, mask_size="resize").check()


def test_input_frame_rois_are_checked_against_the_eval_transform_output(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    for i in (1, 2):  # val and test images
        _png(root / "rois" / f"{i}.png", size=(224, 224), value=255)
    _png(root / "masks" / "1.png", size=(7, 7), value=255)  # unused: rois/ wins for val/test images
    with pytest.raises(XaiBenchError,
                       match=r"'rois/1.png 224x224 \(input frame 32x32\)'.*network-input frame"):
        _module(root, mask_size="reject").check()
    for i in (1, 2):
        _png(root / "rois" / f"{i}.png", value=255)
    module = _module(root, mask_size="reject")
    module.check()
    assert module.test_dataset[0]["mask"].shape == (SIZE, SIZE)


@pytest.mark.slow
def test_training_with_a_rejected_mask_fails_before_training(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data" / "folder", n=24)
    _png(root / "masks" / "2.png", size=(16, 16), value=255)
    run = tmp_path / "run"
    proc = run_cli(["xai_bench.train", "debug=tiny", "dataset=folder", "dataset.num_classes=2",
                    "dataset.class_names=[a,b]", f"dataset.img_size={SIZE}",
                    "+dataset.mask_size=reject", f"paths.data_dir={tmp_path / 'data'}",
                    "logger=none", f"hydra.run.dir={run}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "'masks/2.png 16x16 (image 32x32)'" in proc.stderr.strip().splitlines()[-1]
    # before: the error came from the test loop, after training
    assert not (run / "checkpoints").exists()


# ----------------------------------------------------------------------------- finding 8: preflight
def test_missing_data_and_weights_are_reported_together(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("dataset=kvasir", "init=dino", f"paths.root_dir={tmp_path}",
                      f"init_from={tmp_path / 'no_run'}")
    with pytest.raises(XaiBenchError) as err:
        check_inputs(cfg)
    message = str(err.value)
    assert message.startswith("3 inputs of this run are missing or invalid, fix them all: "
                              "(1) Dataset 'kvasir' not found")
    assert "(2) init=dino needs the pretrained weights file dino_vitbase16_pretrain.pth" in message
    assert "(3) checkpoint not found" in message and "\n" not in message


def test_one_missing_input_keeps_its_own_error(compose_cfg, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="dino_vitbase16_pretrain.pth"):
        # synthetic data: nothing to miss
        check_inputs(compose_cfg("init=dino", f"paths.root_dir={tmp_path}"))
    with pytest.raises(DatasetNotFoundError, match="Dataset 'kvasir' not found"):
        check_inputs(compose_cfg("dataset=kvasir", f"paths.root_dir={tmp_path}"))
    assert check_inputs(compose_cfg("debug=tiny", f"paths.root_dir={tmp_path}")).name == "synthetic"


@pytest.mark.slow
def test_train_cli_lists_data_and_weights_in_one_message(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_cli(["xai_bench.train", "dataset=kvasir", "init=dino", f"paths.root_dir={tmp_path}",
                    "logger=none", f"hydra.run.dir={run}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: 2 inputs of this run are missing or invalid")
    assert "Dataset 'kvasir' not found" in line and "dino_vitbase16_pretrain.pth" in line
    assert not (run / "config.yaml").exists()
