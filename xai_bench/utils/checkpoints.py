"""Reading a checkpoint file without running pickled code.

A checkpoint can come from a stranger (a release page, a colleague, a shared cluster folder);
a pickle runs arbitrary code when loaded. Every layer that opens one (the models' weights
loader, the run folder's resume logic) reads it here, through `torch.load(weights_only=True)`
or safetensors.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from xai_bench.utils.errors import UnsafeCheckpointError, XaiBenchError

__all__ = ["SAFETENSORS_SUFFIX", "load_checkpoint_safely", "read_safetensors"]

SAFETENSORS_SUFFIX = ".safetensors"


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
        return dict(read_safetensors(file))
    try:
        # mmap: tensors are mapped, not read, so checking a large checkpoint before Lightning
        # loads it costs little (legacy non-zip files cannot be mapped)
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as err:
        reason = _unsafe_reason(err)
        what = (
            "it contains arbitrary Python objects, which could run code when unpickled"
            if "GLOBAL" in reason
            else "it is not a plain tensor checkpoint "
            "(it may contain arbitrary Python objects, or be corrupt)"
        )
        raise UnsafeCheckpointError(
            f"refused to load {file.resolve()}: {what} ({reason}). Convert it to safetensors or "
            "save a plain state dict of tensors (torch.save(model.state_dict(), path)) from a "
            "trusted environment."
        ) from None
    except Exception as err:  # corrupt or truncated files raise many types
        raise XaiBenchError(f"could not read checkpoint {file.resolve()}: {err}") from err
    if not isinstance(obj, dict):
        raise XaiBenchError(
            f"checkpoint {file.resolve()} holds a {type(obj).__name__}, not a dict of tensors."
        )
    return obj


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors (the format holds no code: nothing to refuse)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file), device="cpu")
    except Exception as err:
        raise XaiBenchError(f"could not read safetensors file {file.resolve()}: {err}") from err
