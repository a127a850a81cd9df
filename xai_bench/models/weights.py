"""Pretrained weights: find the file (or the hub), read it safely, and load it into a model.

Weights files come from strangers (release pages, model hubs, colleagues). A pickle can run
arbitrary code when loaded, so every file goes through `torch.load(weights_only=True)` or
safetensors, and anything else is refused with one message saying how to convert it.
Loading is strict about the backbone: a file that silently fails to fill half the model would
make a whole grid of experiments meaningless, so missing or unexpected keys are errors.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from xai_bench.utils.errors import (
    ConfigError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    XaiBenchError,
)

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

# Containers that release files and training scripts wrap a state dict in, in lookup order.
WRAPPER_KEYS = ("model", "state_dict", "teacher", "module")
# Prefixes added by DataParallel / DINO / Lightning-style wrappers around the backbone.
WRAPPER_PREFIXES = ("module.", "backbone.", "model.")
# Keys a file may carry that the classifier never uses (MAE pre-training decoder and mask token).
HARMLESS_EXTRA_PREFIXES = ("decoder", "mask_token")
# Buffers older files lack and that never change a forward pass.
TOLERATED_MISSING_SUFFIXES = ("num_batches_tracked",)

# Where the official file of each named init comes from (shown when it is missing). Format
# fields: {arch}, {hub_tag}. Data, not branches: add a line for a new init.
WEIGHT_SOURCES: dict[str, str] = {
    "dino": (
        "the official DINO release file dino_vitbase16_pretrain.pth (ViT-B/16 backbone, "
        "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth; "
        "timm tag vit_base_patch16_224.dino holds the same weights)"
    ),
    "mae": (
        "the official MAE fine-tuned checkpoint mae_finetuned_vit_base.pth (MAE ViT-B/16 after "
        "ImageNet-1k fine-tuning, https://dl.fbaipublicfiles.com/mae/finetune/mae_finetuned_vit_base.pth); "
        "it is not on the timm hub"
    ),
    "sup": (
        "the timm tag vit_base_patch16_224.augreg_in21k_ft_in1k (Hugging Face repo "
        "timm/vit_base_patch16_224.augreg_in21k_ft_in1k, file model.safetensors)"
    ),
    "mae_pretrain": (
        "the timm tag vit_base_patch16_224.mae (Hugging Face repo timm/vit_base_patch16_224.mae, "
        "file model.safetensors; MAE pre-training only, not the study's fine-tuned file)"
    ),
}
# The study's architecture, which the WEIGHT_SOURCES files are for.
STUDY_ARCH = "vit_base_patch16_224"
# Fallback for inits without a line above that name a hub tag.
HUB_SOURCE_TEMPLATE = "the timm tag {arch}.{hub_tag} (Hugging Face repo timm/{arch}.{hub_tag}, file model.safetensors)"

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_STRINGS = {"1", "true", "yes", "on"}
_FALSE_STRINGS = {"0", "false", "no", "off"}


# --------------------------------------------------------------------------------------------
# Reading files


def _unsafe_reason(err: BaseException) -> str:
    # torch's message is a page long; its first "Unsupported global: GLOBAL x.y" line is the news.
    text = str(err)
    match = re.search(r"Unsupported global: GLOBAL [\w.]+", text) or re.search(
        r"Unsupported [^\n]+", text
    )
    return match.group(0) if match else (text.strip().splitlines() or [type(err).__name__])[0]


def load_checkpoint_safely(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (weights files and Lightning checkpoints).

    Raises UnsafeCheckpointError when the file holds arbitrary Python objects, XaiBenchError when
    it is missing or unreadable.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise XaiBenchError(f"checkpoint file not found: {file.resolve()}")
    if file.suffix == SAFETENSORS_SUFFIX:
        return dict(_read_safetensors(file))
    try:
        # mmap: tensors are mapped, not read, so checking a large checkpoint before Lightning
        # loads it costs little (legacy non-zip files cannot be mapped)
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as err:
        reason = _unsafe_reason(err)
        what = (
            "it contains arbitrary Python objects, which could run code when unpickled"
            if "GLOBAL" in reason
            else "it is not a plain tensor checkpoint (it may contain arbitrary Python objects, or be corrupt)"
        )
        raise UnsafeCheckpointError(
            f"refused to load {file.resolve()}: {what} ({reason}). Convert it to safetensors or save a "
            "plain state dict of tensors (torch.save(model.state_dict(), path)) from a trusted environment."
        ) from None
    except Exception as err:  # corrupt or truncated files raise many types
        raise XaiBenchError(f"could not read checkpoint {file.resolve()}: {err}") from err
    if not isinstance(obj, dict):
        raise XaiBenchError(
            f"checkpoint {file.resolve()} holds a {type(obj).__name__}, not a dict of tensors."
        )
    return obj


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as err:
        raise XaiBenchError(f"could not read safetensors file {file.resolve()}: {err}") from err


def _unwrap(obj: Mapping[str, Any], file: Path) -> dict[str, torch.Tensor]:
    """Descend into {"model": ...}-style containers until a flat dict of tensors is reached."""
    current: Mapping[str, Any] = obj
    while not all(isinstance(v, torch.Tensor) for v in current.values()):
        inner = next(
            (current[k] for k in WRAPPER_KEYS if isinstance(current.get(k), Mapping)), None
        )
        if inner is None:
            break
        current = inner
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise XaiBenchError(
            f"{file.resolve()} holds no state dict: top-level keys are {sorted(map(str, obj))[:8]}; "
            f"expected tensors, possibly under one of {list(WRAPPER_KEYS)}."
        )
    dropped = sorted(set(current) - set(tensors))
    if dropped:
        log.debug("ignoring non-tensor entries of %s: %s", file, dropped)
    return tensors


def strip_wrapper_prefixes(
    state_dict: Mapping[str, torch.Tensor], ignore: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Remove "module."/"backbone."/"model." while every key (outside `ignore` prefixes) has it.

    `ignore` lets a DINO teacher ({"backbone.*", "head.*"}) lose its prefix: its projection head
    is dropped later with the classifier anyway.
    """
    ignore = tuple(ignore)
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            relevant = [k for k in sd if not _under(k, ignore)]
            if relevant and all(k.startswith(prefix) for k in relevant):
                sd = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}
                changed = True
    return sd


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors / .pth / .pt / .bin / .ckpt file, read safely.

    Containers ("model", "state_dict", "teacher", "module") are unwrapped and wrapper prefixes
    carried by every key are stripped.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsNotFoundError(f"weights file not found: {file.resolve()}")
    if file.suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ConfigError(
            f"{file.resolve()}: unknown weights format {file.suffix!r}; "
            f"use one of {SAFETENSORS_SUFFIX}, {', '.join(TORCH_SUFFIXES)}."
        )
    obj = load_checkpoint_safely(file)
    return strip_wrapper_prefixes(_unwrap(obj, file))


# --------------------------------------------------------------------------------------------
# The init config and where its weights come from


@dataclass(frozen=True)
class InitSpec:
    """The `init/` config group: which weights a model starts from."""

    name: str = "random"
    pretrained: bool = False
    hub_tag: str | None = None
    file: str | None = None
    path: str | None = None
    key_map: dict[str, str] = field(default_factory=dict)
    allow_hub: str | bool = "auto"

    @classmethod
    def from_config(cls, init: Mapping[str, Any] | None) -> InitSpec:
        """Accept a DictConfig, a plain dict or None (= random init)."""
        if init is None:
            return cls()
        try:
            from omegaconf import OmegaConf

            if OmegaConf.is_config(init):
                init = OmegaConf.to_container(init, resolve=True)  # type: ignore[assignment]
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
        if not isinstance(init, Mapping):
            raise ConfigError(
                f"init must be a mapping (the init/ config group), got {type(init).__name__}."
            )
        key_map = init.get("key_map") or {}
        if not isinstance(key_map, Mapping):
            raise ConfigError(
                f"init.key_map must map old key prefixes to new ones, got {key_map!r}."
            )
        return cls(
            name=str(init.get("name") or "random"),
            pretrained=_as_bool(init.get("pretrained", False), "init.pretrained"),
            hub_tag=_opt_str(init.get("hub_tag")),
            file=_opt_str(init.get("file")),
            path=_opt_str(init.get("path")),
            key_map={str(k): str(v) for k, v in key_map.items()},
            allow_hub=_as_allow_hub(init.get("allow_hub", "auto")),
        )

    @property
    def wants_weights(self) -> bool:
        # An explicit path is loaded even under init=random: the user named a file on purpose.
        return self.pretrained or self.path is not None


def _opt_str(value: Any) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE_STRINGS | _FALSE_STRINGS:
        return value.lower() in _TRUE_STRINGS
    raise ConfigError(f"{what} must be true or false, got {value!r}.")


def _as_allow_hub(value: Any) -> str | bool:
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        return _as_bool(value, "init.allow_hub")
    except ConfigError:
        raise ConfigError(f"init.allow_hub must be auto, true or false, got {value!r}.") from None


def hub_endpoint() -> tuple[str, int]:
    """Host and port of the Hugging Face endpoint (HF_ENDPOINT points mirrors elsewhere)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_offline_reason(allow_hub: str | bool, timeout: float = 2.0) -> str | None:
    """None when the hub may be used; otherwise why not (for the error message).

    "auto" tries a 2-second TCP connect so an offline cluster node fails fast with a clear
    message instead of hanging in a download retry loop.
    """
    if allow_hub is False:
        return "init.allow_hub=false"
    if allow_hub == "auto":
        for var in _OFFLINE_ENV:
            if os.environ.get(var, "").strip().lower() in _TRUE_STRINGS:
                return f"{var} is set (init.allow_hub=auto)"
        host, port = hub_endpoint()
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError:
            return f"{host}:{port} is not reachable (init.allow_hub=auto)"
    return None


@dataclass(frozen=True)
class WeightsSource:
    """A resolved place to read weights from: a file, or a timm hub tag."""

    path: Path | None = None
    hub_name: str | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"hf-hub:timm/{self.hub_name}"

    def read(self, timm_kwargs: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
        """The state dict (file: read safely; hub: timm downloads and converts it)."""
        if self.path is not None:
            return load_state_dict_file(self.path)
        return _hub_state_dict(str(self.hub_name), dict(timm_kwargs or {}))


def _hub_state_dict(hub_name: str, timm_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    # timm applies its own checkpoint conversion for the tag; our loader then does the head,
    # pos_embed and added-attention handling exactly as for a file.
    import timm

    try:
        model = timm.create_model(hub_name, pretrained=True, **timm_kwargs)
    except Exception as err:
        raise WeightsNotFoundError(
            f"could not get the pretrained weights {hub_name} from the timm / Hugging Face hub: {err}. "
            "Download the file on a machine with internet access and give it with init.path=/path/to/file."
        ) from err
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_file_names(spec: InitSpec, arch: str) -> list[str]:
    """File names looked up in the weights folder, in order."""
    names = [spec.file] if spec.file else []
    if spec.hub_tag:
        names += [
            f"{arch}.{spec.hub_tag}{SAFETENSORS_SUFFIX}",
            f"{arch}.{spec.hub_tag}/model{SAFETENSORS_SUFFIX}",
        ]
    return list(dict.fromkeys(names))


def source_hint(spec: InitSpec, arch: str) -> str | None:
    """Where the official weights of this init come from, if known.

    WEIGHT_SOURCES describe the study's ViT-B/16 files; for another arch the hub name for that
    arch is added, since the ViT-B/16 file would not fit it.
    """
    hub = HUB_SOURCE_TEMPLATE.format(arch=arch, hub_tag=spec.hub_tag) if spec.hub_tag else None
    known = WEIGHT_SOURCES.get(spec.name)
    if known is None:
        return hub
    if hub is not None and arch != STUDY_ARCH:
        return f"{known}; for model {arch}: {hub}"
    return known


def resolve_weights(
    spec: InitSpec, arch: str, weights_dir: str | os.PathLike[str] | None
) -> WeightsSource | None:
    """explicit path -> weights_dir/<file> (and the hub-style names) -> hub if allowed -> error.

    Runs before the model is built so a missing file fails in seconds, not after construction.
    """
    if not spec.wants_weights:
        return None
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"init={spec.name}: the weights file given by init.path={spec.path} does not exist "
                f"(resolved: {path.resolve()}). Fix the path, or drop init.path to look in the weights folder."
            )
        return WeightsSource(path=path.resolve())

    folder = Path(weights_dir).expanduser().resolve() if weights_dir is not None else None
    names = expected_file_names(spec, arch)
    if folder is not None:
        for name in names:
            if (folder / name).is_file():
                return WeightsSource(path=folder / name)

    offline = hub_offline_reason(spec.allow_hub) if spec.hub_tag else "init.hub_tag is not set"
    if offline is None:
        return WeightsSource(hub_name=f"{arch}.{spec.hub_tag}")
    raise WeightsNotFoundError(_missing_message(spec, arch, folder, names, offline))


def _missing_message(
    spec: InitSpec, arch: str, folder: Path | None, names: list[str], offline: str
) -> str:
    expected = names[0] if names else "a weights file"
    where = str(folder) if folder is not None else "paths.weights_dir (no weights folder was given)"
    parts = [
        f"init={spec.name} needs the pretrained weights file {expected} for model {arch}, "
        f"and it was not found in {where}"
    ]
    if len(names) > 1:
        parts[0] += f" (also looked for {', '.join(names[1:])})"
    parts[0] += "."
    parts.append(
        f"Put the file in {where}, or give its path with the override init.path=/path/to/file."
    )
    hint = source_hint(spec, arch)
    if hint:
        parts.append(f"Where to get it: {hint}.")
    parts.append(f"The hub was not used: {offline}.")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Loading a state dict into a model


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Qualified module name(s) of the model's classifier, whose weights are always fresh."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module):
        return []
    return [name for name, module in model.named_modules() if module is head and name]


def rename_prefixes(
    state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Apply init.key_map: each key starting with an old prefix gets the new one (first match)."""
    if not key_map:
        return dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for old, new in key_map.items():
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        if new_key in out:
            raise XaiBenchError(
                f"init.key_map {dict(key_map)} maps two keys of the file onto {new_key}; "
                "the file already has that key, so the rename is wrong for this file."
            )
        out[new_key] = value
    return out


def resample_pos_embed(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Interpolate a ViT file's pos_embed to the model's patch grid (another img_size or patch)."""
    pos = state_dict.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is None or not isinstance(target, torch.Tensor) or pos.shape == target.shape:
        return
    from timm.layers import resample_abs_pos_embed

    # timm ViTs without embed_class keep the prefix tokens out of pos_embed.
    prefix = (
        0
        if getattr(model, "no_embed_class", False)
        else int(getattr(model, "num_prefix_tokens", 1))
    )
    old_tokens = pos.shape[1] - prefix
    side = int(round(old_tokens**0.5))
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if (
        pos.ndim != 3
        or side * side != old_tokens
        or grid is None
        or pos.shape[-1] != target.shape[-1]
    ):
        return  # reported as a shape mismatch by the caller
    state_dict["pos_embed"] = resample_abs_pos_embed(
        pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix
    )
    log.info("resampled pos_embed from a %dx%d to a %dx%d patch grid", side, side, *grid)


def _first(keys: Iterable[str], n: int = 6) -> str:
    keys = list(keys)  # model / file order: the first offenders are the informative ones
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def load_weights_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    key_map: Mapping[str, str] | None = None,
    source: str = "the weights file",
    fresh_prefixes: Iterable[str] = (),
) -> list[str]:
    """Load a backbone state dict strictly; the classifier head stays fresh.

    `fresh_prefixes` are modules added on top of the architecture (SE/CBAM blocks): they may be
    absent from the file as a whole, and then keep their random init. Returns the model keys
    left at their initial values.
    """
    head = classifier_prefixes(model)
    sd = strip_wrapper_prefixes(state_dict, ignore=head)
    sd = rename_prefixes(sd, key_map or {})
    sd = {k: v for k, v in sd.items() if not _under(k, head)}
    resample_pos_embed(model, sd)

    own = model.state_dict()
    arch = getattr(model, "xai_arch", None) or type(model).__name__
    fresh = tuple(fresh_prefixes)
    fresh_in_file = [k for k in sd if _under(k, fresh)]
    missing = [
        k
        for k in own
        if k not in sd
        and not _under(k, head)
        and not k.endswith(TOLERATED_MISSING_SUFFIXES)
        and not (not fresh_in_file and _under(k, fresh))
    ]
    unexpected = [k for k in sd if k not in own and not k.startswith(HARMLESS_EXTRA_PREFIXES)]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} model parameter(s) missing from the file: {_first(missing)}"
            )
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected key(s) in the file: {_first(unexpected)}"
            )
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_first(mismatched, 4)}")
        raise XaiBenchError(
            f"{source} does not match the architecture {arch}: " + "; ".join(problems) + ". "
            "Check model.arch (and its timm kwargs) against the file, and init.key_map for renamed keys."
        )
    sd = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(sd, strict=False)
    left = [k for k in own if k not in sd]
    if fresh and not fresh_in_file:
        log.warning(
            "%s has no attention-block weights: the SE/CBAM blocks start from random init", source
        )
    log.info(
        "loaded %d tensors from %s; %d left at init (head%s)",
        len(sd),
        source,
        len(left),
        " and attention blocks" if fresh and not fresh_in_file else "",
    )
    return left


# --------------------------------------------------------------------------------------------
# xai_bench's own training checkpoints

# how ClassifierModule names its network in a Lightning checkpoint (torch.compile adds _orig_mod)
TRAINED_STATE_PREFIXES = ("net._orig_mod.", "net.")


def state_dict_mismatch(
    own: Mapping[str, torch.Tensor], found: Mapping[str, Any], *, check_keys: bool = True
) -> str | None:
    """What keeps `found` (a checkpoint's state dict) from loading into a model whose state dict
    is `own`, as one line (shape mismatches first: they say "another architecture"); None when
    it fits. torch.compile's `_orig_mod.` is ignored on both sides."""

    def plain(key: str) -> str:
        return key.replace("_orig_mod.", "")

    own_shapes = {plain(k): tuple(v.shape) for k, v in own.items()}
    found_shapes = {plain(k): tuple(v.shape) for k, v in found.items() if isinstance(v, torch.Tensor)}
    mismatched = [
        f"{k} (checkpoint {found_shapes[k]}, model {shape})"
        for k, shape in own_shapes.items()
        if k in found_shapes and found_shapes[k] != shape
    ]
    problems = [f"{len(mismatched)} tensor(s) of another shape: {_first(mismatched, 3)}"] if mismatched else []
    if check_keys:
        missing = [k for k in own_shapes if k not in found_shapes]
        unexpected = [k for k in found_shapes if k not in own_shapes]
        if missing:
            problems.append(f"{len(missing)} missing: {_first(missing, 3)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_first(unexpected, 3)}")
    return "; ".join(problems) or None


def load_trained_network(
    net: nn.Module,
    checkpoint: str | os.PathLike[str],
    state: Mapping[str, Any] | None = None,
    *,
    config: str = "its run config",
    fix: str = "evaluate a checkpoint with the config of the run that trained it (its run folder's "
    "config.yaml, or run_config=...)",
) -> nn.Module:
    """Load every weight of a network trained by xai_bench (head included) strictly, from its
    Lightning checkpoint (read safely) or a plain state dict. `state`: the checkpoint already read.

    A checkpoint of another architecture (same keys, other shapes) is refused in one line that
    names the first differing tensors; `config` says where the model came from and `fix` what to do.
    """
    state = load_checkpoint_safely(checkpoint) if state is None else state
    state = state.get("state_dict", state)
    weights = {}
    for key, value in state.items():
        for prefix in TRAINED_STATE_PREFIXES:
            if key.startswith(prefix):
                weights[key[len(prefix):]] = value
                break
    if not weights:
        weights = dict(state)  # a plain state dict of the network
    problem = state_dict_mismatch(net.state_dict(), weights)
    if problem:
        raise XaiBenchError(
            f"checkpoint {checkpoint} does not match the model of {config} ({problem}): {fix}."
        )
    net.load_state_dict(weights, strict=True)
    return net


def load_init_from(net: nn.Module, init_from: str | os.PathLike[str]) -> nn.Module:
    """`init_from=<run folder or checkpoint>`: every weight of a network this task trained before
    (head included), for ATCON's unsupervised fine-tuning of a supervised model. Unlike
    `ckpt_path`, the optimizer and the epoch counters start fresh."""
    from xai_bench.tracking import resolve_checkpoint  # a run folder -> its checkpoint

    load_trained_network(
        net, resolve_checkpoint(init_from), config="this run's model config",
        fix="init_from needs a run trained with the same model settings (model.*)",
    )
    log.info("network weights (head included) from %s", init_from)
    return net
