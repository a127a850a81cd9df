"""Print the composed config as a tree at the start of a run, so the log shows what ran."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from rich import get_console
from rich.syntax import Syntax
from rich.tree import Tree

DEFAULT_ORDER = ("dataset", "init", "model", "optimizer", "scheduler", "module", "trainer",
                 "callbacks", "logger", "paths")


@rank_zero_only
def print_config_tree(cfg: DictConfig, order: Sequence[str] = DEFAULT_ORDER) -> None:
    tree = Tree("config", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order and f != "hydra"]
    for name in fields:
        node = cfg[name]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        tree.add(f"[bold]{name}[/bold]", guide_style="dim").add(
            Syntax(text, "yaml", theme="ansi_dark"))
    get_console().print(tree)
