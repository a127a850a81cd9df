"""Builds the Lightning callbacks and loggers of a config: named groups of `_target_` nodes.

W&B's mode. `WANDB_MODE` in the environment is W&B's documented switch, so when it is set it wins
over the config's `logger.wandb.offline`; without it the config decides (offline by default).
One log line says which mode is used and why. Lightning's WandbLogger(offline=True) would set
WANDB_MODE=dryrun in the process environment and so silently override an explicit
WANDB_MODE=online: the mode is passed to wandb.init instead, and the environment is left alone.
An online run first checks in seconds that the W&B server can be reached (a TCP connect, through
the proxy when one is configured), instead of W&B's ~100 s of retries before a CommError.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import urllib.request
from typing import Any
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from xai_bench.utils.errors import ConfigError, XaiBenchError
from xai_bench.utils.quiet import drop_retired_wandb_settings

log = logging.getLogger(__name__)

# WANDB_MODE values (W&B's own) -> what they mean here
WANDB_OFFLINE_MODES = {"offline": "offline", "dryrun": "offline", "online": "online",
                       "run": "online", "disabled": "disabled"}
WANDB_DEFAULT_URL = "https://api.wandb.ai"
# seconds an online run may wait for a TCP connection to the W&B server before giving up
WANDB_CONNECT_TIMEOUT = 5.0
STAY_OFFLINE = (
    "to stay offline, unset WANDB_MODE (or set WANDB_MODE=offline) and keep "
    "logger.wandb.offline=true: the run is written to <run folder>/wandb/ and can be uploaded "
    "later with `wandb sync`"
)

_UNEXPECTED_KEYWORD = re.compile(r"unexpected keyword argument '(\w+)'")


def unexpected_keyword(err: BaseException) -> str | None:
    """The argument name of a TypeError "got an unexpected keyword argument 'x'" in the chain of
    `err` (Hydra wraps errors of a _target_ in an InstantiationException), else None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        match = _UNEXPECTED_KEYWORD.search(str(current)) if isinstance(current, TypeError) else None
        if match is None and "InstantiationException" in type(current).__name__:
            match = _UNEXPECTED_KEYWORD.search(str(current))
        if match:
            return match.group(1)
        current = current.__cause__ or current.__context__
    return None


def unknown_setting(section: str, name: str, target: Any = None) -> ConfigError:
    """A one-line error for `+section.name=...` that the section's target does not take."""
    what = f" ({target})" if target else ""
    return ConfigError(
        f"{section}.{name} is not a setting of {section}{what}: check the spelling, or drop it "
        f"(~{section}.{name} on the command line removes an added key)."
    )


def instantiate_node(node: Any, section: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a mistyped key (`+optimizer.lrr=1`) reported as one line."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as err:
        name = unexpected_keyword(err)
        if name is None:
            raise
        target = node.get("_target_") if isinstance(node, DictConfig | dict) else None
        raise unknown_setting(section, name, target) from err


def _instantiate_group(cfg: DictConfig | None, kind: str) -> list:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{kind} config must be a mapping of name -> {{_target_: ...}}.")
    objects = []
    for name, node in cfg.items():
        if node is None:  # disabled from the command line or a debug config: callbacks.x=null
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"{kind}.{name} has no _target_; "
                              f"set it or disable it with {kind}.{name}=null.")
        if kind == "logger" and str(node._target_).endswith("WandbLogger"):
            node = _with_wandb_mode(node, f"{kind}.{name}")
        objects.append(drop_retired_wandb_settings(instantiate_node(node, f"{kind}.{name}")))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    return _instantiate_group(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """The configured loggers. A W&B logger gets its mode (see the module docstring); an online
    one is refused in seconds when the server cannot be reached."""
    return _instantiate_group(cfg, "logger")


# --------------------------------------------------------------------------------------------
# W&B


def wandb_mode(config_offline: bool, key: str = "logger.wandb") -> tuple[str, str]:
    """(mode, why): WANDB_MODE from the environment when set, else the config's `offline`."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in WANDB_OFFLINE_MODES:
            raise ConfigError(
                f"WANDB_MODE={env} is not a W&B mode: "
                f"use online, offline or disabled ({STAY_OFFLINE})."
            )
        mode = WANDB_OFFLINE_MODES[env]
        overrides = f", which overrides the config's {key}.offline={str(config_offline).lower()}"
        differs = (mode == "online") == config_offline
        return mode, f"WANDB_MODE={env} in the environment" + (overrides if differs else "")
    mode = "offline" if config_offline else "online"
    return mode, f"{key}.offline={str(config_offline).lower()}" + (
        "; set WANDB_MODE=online (after `wandb login`) to log live" if config_offline else ""
    )


def _with_wandb_mode(node: DictConfig, key: str) -> DictConfig:
    """The logger node with `offline` replaced by wandb.init's `mode` (see the module docstring)."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    config_offline = bool(container.pop("offline", False))
    mode, why = wandb_mode(config_offline, key)
    log.info("W&B mode: %s, from %s", mode, why)
    if mode == "online":
        check_wandb_reachable()
    container["offline"] = False  # Lightning must not set WANDB_MODE itself
    container["mode"] = mode
    return OmegaConf.create(container)


def wandb_base_url() -> str:
    """The W&B server: WANDB_BASE_URL, else the one `wandb login --host` saved, else W&B's."""
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url
    try:
        import wandb

        return str(wandb.setup().settings.base_url or WANDB_DEFAULT_URL)
    except Exception:  # noqa: BLE001 - only a hint for the reachability check
        return WANDB_DEFAULT_URL


def check_wandb_reachable(timeout: float = WANDB_CONNECT_TIMEOUT) -> None:
    """Refuse an online W&B run in seconds when its server (or the proxy to it) cannot be
    reached."""
    url = wandb_base_url()
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    target = (host, port)
    proxy = urllib.request.getproxies().get(parsed.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        target = (via.hostname or "", via.port or 80)
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        reason = (f"no answer within {timeout:g} s" if isinstance(err, TimeoutError)
                  else (err.strerror or type(err).__name__))
        through = f" through the proxy {target[0]}:{target[1]}" if target != (host, port) else ""
        raise XaiBenchError(
            f"W&B is online but its server {url} cannot be reached{through} ({reason}): check the "
            f"network, or {STAY_OFFLINE}."
        ) from None


def wandb_error_message(err: BaseException) -> str | None:
    """One line for a W&B error (no API key, no network, rejected key), else None."""
    wandb = sys.modules.get("wandb")
    errors = getattr(wandb, "errors", None)
    base = getattr(errors, "Error", None)
    if base is None or not isinstance(err, base):
        return None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if type(err).__name__ in ("UsageError", "AuthenticationError"):
        todo = "log in with `wandb login` (or set WANDB_API_KEY)"
    else:
        todo = "check the network and the W&B server (WANDB_BASE_URL)"
    return (f"W&B could not start an online run ({type(err).__name__}: {first}): {todo}, "
            f"or {STAY_OFFLINE}.")


def start_loggers(loggers: list[Logger]) -> None:
    """Start each logger's experiment now (rank zero), so that a W&B failure (no API key, a
    rejected key) stops the task in one line before it writes anything into the run folder."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        try:
            _ = logger.experiment
        except Exception as err:
            message = wandb_error_message(err)
            if message is None:
                raise
            raise XaiBenchError(message) from None
