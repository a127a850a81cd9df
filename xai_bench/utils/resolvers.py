"""Plain OmegaConf resolver functions (no file access); xai_bench.tracking.resolvers registers
them with the run-folder ones:

  ${xai.concat:${a},${b}}   concatenate lists, dropping repeats (W&B tags: fixed + user's)
  ${xai.slurm_gpus:ACC,N}   GPUs per SLURM node: N, or 0 when the trainer runs on the CPU
  ${xai.shortcut_label:${dataset.shortcut}}   the synthetic task's decision rule for run names:
                            lesion | marker | both0.98 | none (docs/known-truth.md)
"""

from __future__ import annotations

from typing import Any

from omegaconf import ListConfig

from xai_bench.utils.errors import ConfigError

__all__ = ["concat", "shortcut_label", "slurm_gpus"]


def concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for items in lists:
        values = list(items) if isinstance(items, list | tuple | ListConfig) else [items]
        out.extend(v for v in values if v not in out and v is not None)
    return out


def slurm_gpus(accelerator: str, devices: Any) -> int:
    if str(accelerator) == "cpu":
        return 0
    if not isinstance(devices, int):
        raise ConfigError(
            f"trainer.devices={devices!r}: on SLURM give a number of devices per node (it sets the "
            "launcher's tasks_per_node and gpus_per_node)."
        )
    return devices


def shortcut_label(shortcut: Any) -> str:
    """`none` without a planted marker, else its rule, rule both with its strength."""
    if not shortcut or not shortcut.get("enabled", False):
        return "none"
    rule = str(shortcut.get("rule", "both"))
    return f"both{float(shortcut.get('strength', 0.9))}" if rule == "both" else rule
