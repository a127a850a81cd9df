"""What may be built from a run folder's config.yaml: an explicit allowlist of `_target_`s.

A run folder is untrusted input: it comes from a colleague, a download or a shared cluster
folder, and Hydra's `instantiate` calls whatever a `_target_` names with whatever arguments the
file gives (`{_target_: torch.load, f: evil.pth, weights_only: false}` runs a pickle payload).
So before anything of a run's config is built, every `_target_` in it (dicts and lists at any
depth, `_partial_` and `_args_` nodes included) must be one of the data-module and model
builders of xai_bench that conf/ uses, or an albumentations transform class, and no string may
hold an OmegaConf interpolation (`${...}`): Hydra would evaluate it while building, and
`${oc.create:...}` turns a string into a new `_target_` node. A config.yaml that xai_bench
wrote is fully resolved, so a genuine run never trips either rule.

The user's own command-line and conf/ configs are not checked: they are as free as Hydra makes
them. Names are checked without importing anything outside the allowed package prefixes
(importing a module runs its code).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import OmegaConf

from xai_bench.utils.errors import XaiBenchError

__all__ = [
    "BUILT_SECTIONS",
    "TRUSTED_TARGETS",
    "UntrustedConfigError",
    "check_run_config",
    "is_trusted_target",
    "trusted_container",
    "untrusted_entries",
]

# xai_bench's builders of the sections evaluation builds from a run (the data and model groups
# of conf/; tests/test_hostile_run_folder.py keeps this in sync). Nothing else of xai_bench is
# ever built from a run folder, so nothing else is allowed: least privilege.
TRUSTED_TARGETS: frozenset[str] = frozenset({
    "xai_bench.data.ImageTableDataModule",
    "xai_bench.data.SyntheticDataModule",
    "xai_bench.data.standin_datamodule",
    "xai_bench.models.build_model",
})
ALBUMENTATIONS = "albumentations"
# the sections of a training run's config.yaml that evaluation builds or copies
BUILT_SECTIONS: tuple[str, ...] = ("dataset", "init", "model")
_LISTED = 3


class UntrustedConfigError(XaiBenchError):
    """A run folder's config asks for something xai_bench does not build from a run folder."""


def _locate_albumentations(name: str) -> Any:
    """The object `name` denotes inside albumentations, found the way Hydra's `_locate` finds it
    (attributes first, then submodules), importing only modules under `albumentations.`; None
    when there is no such object."""
    parts = name.split(".")
    if parts[0] != ALBUMENTATIONS or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return None
    obj: Any = importlib.import_module(ALBUMENTATIONS)
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        # a submodule not imported yet: only albumentations' own (e.g. albumentations.pytorch)
        if not isinstance(obj, ModuleType) or obj.__name__ != ".".join(parts[: depth - 1]):
            return None
        try:
            obj = importlib.import_module(".".join(parts[:depth]))
        except ImportError:
            return None
    return obj


def _is_albumentations_transform(name: str) -> bool:
    obj = _locate_albumentations(name)
    if not isinstance(obj, type):
        return False
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    return issubclass(obj, BasicTransform | BaseCompose)


def is_trusted_target(target: Any) -> bool:
    """True for xai_bench's own builders and albumentations transform classes (Compose,
    OneOf, ToTensorV2, ...); False for anything else, functions of albumentations included."""
    if not isinstance(target, str):
        return False
    if target in TRUSTED_TARGETS:
        return True
    return target.startswith(ALBUMENTATIONS + ".") and _is_albumentations_transform(target)


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def untrusted_entries(node: Any, path: str = "", targets: bool = True) -> Iterator[tuple[str, str]]:
    """(key path, what is wrong) for every entry of a config that must not be built from a run
    folder: a `_target_` off the allowlist (when `targets`) or a string holding `${`. An
    OmegaConf node is read unresolved: nothing of an untrusted file is evaluated to check it."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, Mapping):
        if targets and "_target_" in node and not is_trusted_target(node["_target_"]):
            yield path or "<top>", f"_target_: {node['_target_']!r}"
        for key, value in node.items():
            if not (targets and key == "_target_" and isinstance(value, str)):
                yield from untrusted_entries(value, _child(path, key), targets)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from untrusted_entries(value, _child(path, index), targets)
    elif isinstance(node, str) and "${" in node:
        yield path or "<top>", f"the interpolation {node[:60]!r}"


def _refuse(found: list[tuple[str, str]], source: str) -> UntrustedConfigError:
    shown = "; ".join(f"{path} has {what}" for path, what in found[:_LISTED])
    more = f" (and {len(found) - _LISTED} more)" if len(found) > _LISTED else ""
    return UntrustedConfigError(
        f"{source}: {shown}{more}. A run folder's config is untrusted input (building it could run "
        "any code), so xai_bench builds only its data modules, its model builder and "
        "albumentations transforms from it, with no ${...} interpolations. If you trust this run, "
        "replace that entry in the config.yaml with an allowed one (or delete it to get the "
        "default); otherwise do not use this run folder."
    )


def trusted_container(node: Any, path: str,
                      source: str | Path = "the training run's config.yaml") -> Any:
    """`node` (a section of a run folder's config) as a plain container, after checking every
    entry; raises one UntrustedConfigError naming each refused key and what it holds. Build
    exactly what this returns: nothing in it is evaluated again."""
    found = list(untrusted_entries(node, path))
    if found:
        raise _refuse(found, str(source))
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def check_run_config(cfg: Any, source: str | Path) -> None:
    """Check a training run's config.yaml as soon as it is read: the sections evaluation builds
    or copies (dataset, init, model) fully, and every other key for interpolations (evaluation
    reads any key through `${run:KEY}`; a config.yaml that xai_bench wrote holds none)."""
    raw = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(raw, Mapping):
        return
    found: list[tuple[str, str]] = []
    for key, value in raw.items():
        found += untrusted_entries(value, str(key), targets=key in BUILT_SECTIONS)
    if found:
        raise _refuse(found, str(source))
