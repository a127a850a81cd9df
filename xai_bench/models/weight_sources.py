"""The init config and where its weights come from: a file, the weights folder or the hub.

The lookup runs before a model is built, so a missing file fails in seconds with one message
saying which file, where it was looked for, where to get it and why the hub was not used.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig

from xai_bench.models.weight_files import SAFETENSORS_SUFFIX, load_state_dict_file
from xai_bench.utils.errors import ConfigError, WeightsNotFoundError

__all__ = [
    "HUB_SOURCE_TEMPLATE",
    "MODEL_BUILDER",
    "STUDY_ARCH",
    "WEIGHT_SOURCES",
    "InitSpec",
    "WeightsSource",
    "check_weights",
    "expected_file_names",
    "hub_endpoint",
    "hub_offline_reason",
    "resolve_weights",
    "source_hint",
]

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
        "ImageNet-1k fine-tuning, "
        "https://dl.fbaipublicfiles.com/mae/finetune/mae_finetuned_vit_base.pth); "
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
HUB_SOURCE_TEMPLATE = (
    "the timm tag {arch}.{hub_tag} "
    "(Hugging Face repo timm/{arch}.{hub_tag}, file model.safetensors)"
)

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE_STRINGS = {"1", "true", "yes", "on"}
_FALSE_STRINGS = {"0", "false", "no", "off"}


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
            f"could not get the pretrained weights {hub_name} "
            f"from the timm / Hugging Face hub: {err}. "
            "Download the file on a machine with internet access "
            "and give it with init.path=/path/to/file."
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
                f"(resolved: {path.resolve()}). "
                "Fix the path, or drop init.path to look in the weights folder."
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


# the model group's builder; another _target_ resolves its weights itself (nothing to check here)
MODEL_BUILDER = "xai_bench.models.build_model"


def check_weights(model_cfg: DictConfig | dict[str, Any] | None) -> None:
    """Resolve the pretrained weights file a model config asks for, without building the
    model (resolve_weights, the lookup build_model itself does first)."""
    if model_cfg is None or model_cfg.get("_target_") != MODEL_BUILDER:
        return
    # only the keys the lookup needs are resolved (num_classes may still be a ??? of the dataset)
    weights_dir = model_cfg.get("weights_dir")
    resolve_weights(InitSpec.from_config(model_cfg.get("init")), str(model_cfg.get("arch")),
                    None if weights_dir is None else str(weights_dir))
