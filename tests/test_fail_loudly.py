"""Failures say so, in one line (issue 12, findings 5 and 7).

5. A diverged run (optimizer.lr=1e6: NaN loss) exited 0 and wrote metrics.json (acc 0.469, loss
   null). Now a NaN/inf training or validation loss stops the run (exit 2, one line: epoch, step,
   learning rate, what to try), keeps the checkpoints saved before, and writes no metrics.json;
   under DDP every rank stops at the same step. An evaluation whose maps are all NaN fails the
   same way.
7. `seed=abc`, `+optimizer.lrr=1`, a checkpoint of another architecture (ckpt=, ckpt_path=,
   init_from=), W&B online without an API key or without a network: each was a traceback (W&B's
   after a 109 s stall). Each is now one line and exit code 2, and leaves the run folder as it
   was. WANDB_MODE in the environment wins over the config's logger.wandb.offline, and the log
   says which mode is used and why. No test reaches the network: W&B's server is a port on
   localhost, open or closed, and the API key is fake.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_RUN, run_cli
from conftest import fails_cleanly as _fails_cleanly
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xai_bench.modules.callbacks import AtomicCheckpointIO, NonFiniteLossError, StopOnNonFiniteLoss
from xai_bench.utils.errors import ConfigError
from xai_bench.utils.instantiate import instantiate_loggers, wandb_mode

TINY = TINY_RUN
HYDRA_OWN = ("train.log", "evaluate.log", ".hydra")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] not in HYDRA_OWN
    }




# --------------------------------------------------------------------------------------------
# 5. non-finite loss: the callback, in-process (a tiny module, real Lightning)


class _Diverging(pl.LightningModule):
    """A linear classifier whose training (or validation) loss turns NaN from epoch `nan_epoch`
    (counted from 0) on, on the ranks listed (all when None)."""

    def __init__(self, nan_epoch: int, where: str = "train",
                 ranks: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.nan_epoch, self.where, self.ranks = nan_epoch, where, ranks

    def _loss(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.layer(x), y)
        hit = self.ranks is None or self.global_rank in self.ranks
        if stage == self.where and self.current_epoch >= self.nan_epoch and hit:
            loss = loss * float("nan")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch, "val"), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=generator),
                         torch.randint(0, 2, (32,), generator=generator))
    return DataLoader(data, batch_size=8)


def _fit(tmp_path: Path, module: pl.LightningModule) -> Path:
    checkpoints = tmp_path / "checkpoints"
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val/loss",
                                   save_last=True),
                   StopOnNonFiniteLoss()],
    )
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    return checkpoints


@pytest.mark.parametrize("where", ["train", "val"])
def test_nan_loss_stops_the_fit_and_keeps_earlier_checkpoints(tmp_path: Path, where: str) -> None:
    with pytest.raises(NonFiniteLossError) as err:
        _fit(tmp_path, _Diverging(nan_epoch=1, where=where))
    message = str(err.value)
    assert "\n" not in message
    what = "training loss" if where == "train" else "validation (val/loss) loss"
    assert f"the {what} became nan at epoch 2, step " in message
    assert ("current learning rate 0.1" in message and "optimizer.lr" in message
            and "gradient_clip_val" in message)
    assert "best.ckpt" in message and "last.ckpt" in message
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    for name in ("best.ckpt", "last.ckpt"):  # epoch 1's: no checkpoint of NaN weights replaced them
        state = torch.load(checkpoints / name, map_location="cpu", weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_finite_loss_is_left_alone(tmp_path: Path) -> None:
    checkpoints = _fit(tmp_path, _Diverging(nan_epoch=99))
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu",
                      weights_only=True)["epoch"] == 2


DDP_SCRIPT = textwrap.dedent('''
    import sys
    import pytorch_lightning as pl
    sys.path.insert(0, sys.argv[1])
    from test_fail_loudly import _Diverging, _loader
    from xai_bench.modules.callbacks import NonFiniteLossError, StopOnNonFiniteLoss

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, enable_checkpointing=False,
                         callbacks=[StopOnNonFiniteLoss()])
    try:
        trainer.fit(_Diverging(nan_epoch=1, ranks=(1,)), train_dataloaders=_loader(),
                    val_dataloaders=_loader())
    except NonFiniteLossError as err:
        print(f"rank {trainer.global_rank} stopped: {err}", flush=True)
        sys.exit(2)
    print(f"rank {trainer.global_rank} finished", flush=True)
''')


@pytest.mark.slow
def test_nan_loss_on_one_ddp_rank_stops_every_rank(tmp_path: Path) -> None:
    """Only rank 1's loss is NaN: both ranks stop at the same step (no rank left waiting in a
    collective), each with the message."""
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-5000:]
    # the ranks print to one pipe: their lines may run together
    matches = re.findall(r"rank (\d) stopped: the training loss became (.+?) "
                         r"at epoch 2, step (\d+)", output)
    stopped = {rank: (value, step) for rank, value, step in matches}
    assert sorted(stopped) == ["0", "1"], output[-5000:]
    assert (stopped["1"][0] == "nan"
            and stopped["0"][0] == "non-finite in another process (DDP rank)")
    assert stopped["0"][1] == stopped["1"][1]  # the same step
    assert "finished" not in output


# --------------------------------------------------------------------------------------------
# CLI fixtures: a finished run (restored at its own path for each test) and a wider model's run
# (finished_run and run_copy: conftest.py)


@pytest.fixture(scope="module")
def wider_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same keys as the finished run's model, other shapes (embed_dim 48 instead of 32)."""
    base = tmp_path_factory.mktemp("wider")
    out = base / "run"
    proc = run_cli(["xai_bench.train", *TINY, "model.embed_dim=48", "trainer.max_epochs=1",
                    "test=false", f"hydra.run.dir={out}"], cwd=base, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


def _rerun(run: Path, *overrides: str, env: dict[str, str] | None = None, timeout: float = 300):
    return run_cli(["xai_bench.train", *TINY, f"hydra.run.dir={run}", *overrides], cwd=run.parent,
                   timeout=timeout, env=env)


# --------------------------------------------------------------------------------------------
# 5. CLI: a diverged training run, an evaluation of NaN maps


@pytest.mark.slow
def test_diverged_training_fails_without_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _rerun(run, "optimizer.lr=1e6")
    _fails_cleanly(proc, "the training loss became nan at epoch 1, step", "learning rate",
                   "optimizer.lr")
    assert not (run / "metrics.json").exists()  # was written with acc 0.469, loss null (issue 12)
    assert "NonFiniteLossError" in (run / "error.txt").read_text()


@pytest.mark.slow
def test_evaluation_with_all_maps_nan_fails(finished_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "nan_run"
    (broken / "checkpoints").mkdir(parents=True)
    shutil.copy(finished_run / "config.yaml", broken / "config.yaml")
    state = torch.load(finished_run / "checkpoints" / "best.ckpt", map_location="cpu",
                       weights_only=True)
    state["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in state["state_dict"].items()}
    torch.save(state, broken / "checkpoints" / "best.ckpt")
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={broken}", f"hydra.run.dir={out}",
                    "method=attention", "max_images=8", "overlays=0", "logger=none",
                    "metric=[localisation]", "print_config=false"], cwd=tmp_path, timeout=600)
    _fails_cleanly(proc, "every map of attention is NaN", "no metrics.json", "per_image.csv")
    assert not (out / "metrics.json").exists()
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) > 1 and "nan_map" in rows[0]


# --------------------------------------------------------------------------------------------
# 7. one line instead of a traceback, the run folder left as it was


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("seed=abc", ("seed=abc is not an integer", "seed=42")),
        ("+optimizer.lrr=1", ("optimizer.lrr is not a setting of optimizer", "~optimizer.lrr")),
        ("+trainer.max_epoch=3", ("trainer.max_epoch is not a setting of trainer",)),
        ("+objective.foo=1", ("objective.foo is not a setting of objective", "~objective.foo")),
    ],
)
def test_bad_value_in_a_rerun_is_one_line(run_copy: Path, override: str,
                                          needles: tuple[str, ...]) -> None:
    before = _digest(run_copy)
    _fails_cleanly(_rerun(run_copy, override), *needles)
    assert _digest(run_copy) == before and not (run_copy / "error.txt").exists()


@pytest.mark.slow
def test_init_from_another_architecture(run_copy: Path, wider_run: Path) -> None:
    before = _digest(run_copy)
    _fails_cleanly(_rerun(run_copy, f"init_from={wider_run}"),
                   "does not match the model of this run's model config",
                   "tensor(s) of another shape", "cls_token",
                   "init_from needs a run trained with the same model")
    assert _digest(run_copy) == before


@pytest.mark.slow
def test_ckpt_path_of_another_architecture(wider_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fails_cleanly(_rerun(run, f"ckpt_path={wider_run / 'checkpoints' / 'last.ckpt'}"),
                   "does not fit the model this config builds", "cls_token")
    # nothing of the run
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "error.txt", "train.log"]


@pytest.mark.slow
def test_evaluate_checkpoint_of_another_architecture(finished_run: Path, wider_run: Path,
                                                     tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    (mixed / "checkpoints").mkdir(parents=True)
    shutil.copy(finished_run / "config.yaml", mixed / "config.yaml")
    shutil.copy(wider_run / "checkpoints" / "last.ckpt", mixed / "checkpoints" / "best.ckpt")
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={mixed}", f"hydra.run.dir={out}", "logger=none"],
                   cwd=tmp_path, timeout=300)
    _fails_cleanly(proc, "does not match the model of its run config",
                   "tensor(s) of another shape", "run_config=")
    assert not (out / "config.yaml").exists() and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_evaluate_bad_seed(finished_run: Path, tmp_path: Path) -> None:
    proc = run_cli(["xai_bench.evaluate", f"ckpt={finished_run}", "seed=abc",
                    f"hydra.run.dir={tmp_path / 'eval'}",
                    "logger=none"], cwd=tmp_path, timeout=300)
    _fails_cleanly(proc, "seed=abc is not an integer")


@pytest.mark.slow
def test_evaluate_half_precision_is_refused_before_any_file(finished_run: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "eval"
    proc = run_cli(["xai_bench.evaluate", f"ckpt={finished_run}", "trainer.precision=bf16-true",
                    f"hydra.run.dir={out}", "logger=none"], cwd=tmp_path, timeout=300)
    _fails_cleanly(proc, "trainer.precision=bf16-true", "32-true")
    assert not (out / "config.yaml").exists() and not (out / "metrics.json").exists()


# --------------------------------------------------------------------------------------------
# 7. W&B online: no API key, no network; which mode wins


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A localhost port that accepts connections and closes them (a W&B server that is 'up')."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                connection.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


def _online_env(tmp_path: Path, base_url: str, api_key: str | None) -> dict[str, str]:
    """The environment of a user with WANDB_MODE=online: no W&B setting of the test machine's
    own (home, config dir, key) leaks in."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "WANDB_CONFIG_DIR": str(home / "wandb"), "WANDB_MODE": "online",
                "WANDB_BASE_URL": base_url, "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    if api_key:
        env["WANDB_API_KEY"] = api_key
    return env


def _online_rerun(run: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    args = [sys.executable, "-m", "xai_bench.train", *TINY, "logger=wandb", f"hydra.run.dir={run}"]
    start = time.monotonic()
    proc = subprocess.run(args, cwd=run.parent, env=env, capture_output=True, text=True,
                          timeout=240)
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_wandb_online_without_api_key(run_copy: Path, tmp_path: Path, listening_port: int) -> None:
    before = _digest(run_copy)
    proc, _ = _online_rerun(
        run_copy, _online_env(tmp_path, f"http://127.0.0.1:{listening_port}", None))
    _fails_cleanly(proc, "W&B could not start an online run", "No API key", "wandb login",
                   "WANDB_MODE=offline", "wandb sync")
    output = proc.stdout + proc.stderr
    assert ("W&B mode: online, from WANDB_MODE=online in the environment, which overrides the "
            "config's logger.wandb.offline=true") in output
    assert _digest(run_copy) == before


@pytest.mark.slow
def test_wandb_online_without_network_fails_in_seconds(run_copy: Path, tmp_path: Path) -> None:
    """A key but no server: W&B itself retried for 109 s before a CommError traceback."""
    before = _digest(run_copy)
    url = f"http://127.0.0.1:{_free_port()}"  # closed: connection refused
    proc, seconds = _online_rerun(run_copy, _online_env(tmp_path, url, "0" * 40))
    _fails_cleanly(proc, f"W&B is online but its server {url} cannot be reached",
                   "WANDB_MODE=offline")
    assert seconds < 90, seconds  # startup + a refused connect; no retry loop
    assert _digest(run_copy) == before


def test_wandb_reachability_check_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from xai_bench.utils.errors import XaiBenchError
    from xai_bench.utils.instantiate import check_wandb_reachable

    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                  "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    start = time.monotonic()
    with pytest.raises(XaiBenchError, match="cannot be reached") as err:
        check_wandb_reachable(timeout=2.0)
    assert time.monotonic() - start < 5 and "\n" not in str(err.value) and url in str(err.value)


def test_wandb_mode_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(True)[0] == "offline" and wandb_mode(False)[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    mode, why = wandb_mode(True)
    assert mode == "online" and "WANDB_MODE=online" in why and "overrides" in why
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode(False)[0] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(True)[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "onlien")
    with pytest.raises(ConfigError, match="WANDB_MODE=onlien is not a W&B mode"):
        wandb_mode(True)


def test_wandb_logger_gets_the_mode_and_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lightning's WandbLogger(offline=True) set WANDB_MODE=dryrun for the whole process, which is
    how the config's offline: true silently beat WANDB_MODE=online."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({"wandb": {"_target_": "pytorch_lightning.loggers.WandbLogger",
                                      "project": "p", "offline": True, "save_dir": str(tmp_path)}})
    (logger,) = instantiate_loggers(cfg)
    assert logger._wandb_init["mode"] == "offline" and not logger._offline
    assert "WANDB_MODE" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (logger,) = instantiate_loggers(cfg)
    assert logger._wandb_init["mode"] == "disabled"

