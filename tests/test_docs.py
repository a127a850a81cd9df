"""The docs site builds without a broken link, the README stays a short front door, and the four
examples of docs/extending.md (with the tests they tell you to copy) run as printed."""

from __future__ import annotations

import inspect
import json
import math
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTENDING = REPO_ROOT / "docs" / "extending.md"
README_LIMIT = 15_000  # bytes
# an example is the fenced block right after `<!-- docs-test: NAME -->`
BLOCK = re.compile(r"<!-- docs-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```",
                   re.S)
KINDS = ("method", "metric", "dataset", "model")
MAX_EXAMPLE_LINES = 19  # "each in under 20 lines"


def extending_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in BLOCK.finditer(EXTENDING.read_text(encoding="utf-8")):
        assert match["name"] not in blocks, f"two blocks named {match['name']} in {EXTENDING}"
        blocks[match["name"]] = match["code"]
    return blocks


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    """Broken links or anchors, pages left out of the nav and API objects that no longer exist
    all fail `--strict`."""
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (site / "index.html").is_file() and (site / "extending" / "index.html").is_file()
    assert "xai_bench.explain.build_method" in (site / "api" / "explain" / "index.html").read_text()


def test_the_data_api_page_lists_every_public_name() -> None:
    """`xai_bench.data` exports lazily (griffe cannot follow that), so docs/api/data.md names each
    object by its module: a name that moves or is added shows up here, not as a silent gap."""
    from xai_bench import data

    page = (REPO_ROOT / "docs" / "api" / "data.md").read_text(encoding="utf-8")
    exports = data._EXPORTS  # the lazy table is the source of truth
    missing = [name for name, module in exports.items()
               if f"::: xai_bench.data.{module}.{name}\n" not in page]
    assert not missing, missing


def test_readme_is_a_short_front_door_with_working_links() -> None:
    readme = REPO_ROOT / "README.md"
    assert readme.stat().st_size < README_LIMIT, f"README.md is {readme.stat().st_size} bytes"
    text = readme.read_text(encoding="utf-8")
    # it opens with the two commands (.ci/run and the Makefile rely on them)
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+://|mailto:", link)]
    assert relative, "the README links into docs/"
    missing = [link for link in relative if not (REPO_ROOT / link).is_file()]
    assert not missing, missing


def test_docs_cite_no_document_users_do_not_have() -> None:
    """As tests/test_lint.py checks the code: cite papers or docs pages, nothing outside."""
    pattern = re.compile("SP" + r"EC \d|\.\./shar" + "ed")  # split: this file must not match itself
    files = [*(REPO_ROOT / "docs").rglob("*.md"), REPO_ROOT / "mkdocs.yml"]
    offenders = [f"{path.relative_to(REPO_ROOT)}:{n}" for path in files
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_extending_page_has_four_short_examples_each_with_its_test() -> None:
    blocks = extending_blocks()
    assert set(blocks) == {*KINDS, *(f"test-{kind}" for kind in KINDS)}, sorted(blocks)
    for kind in KINDS:
        lines = blocks[kind].splitlines()
        assert len(lines) <= MAX_EXAMPLE_LINES, f"the {kind} example has {len(lines)} lines"


def test_extending_examples_run(tmp_path: Path) -> None:
    """In a fresh interpreter: the registrations (methods, metrics, timm models) are global."""
    (tmp_path / "blocks.json").write_text(json.dumps(extending_blocks()))
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    done = [line for line in proc.stdout.splitlines() if line.startswith("ok:")]
    assert done == [f"ok:{kind}" for kind in KINDS], proc.stdout[-3000:]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------------------------
# the runner of test_extending_examples_run (this file run as a script)


def _as_module(name: str, code: str) -> types.ModuleType:
    """Run `code` as the module `name` (timm's register_model looks its module up)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"docs/extending.md ({name})", "exec"), module.__dict__)
    return module


def _run_tests(module: types.ModuleType, fixtures: dict[str, Any]) -> int:
    tests = [fn for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)]
    for fn in tests:
        fn(**{name: fixtures[name] for name in inspect.signature(fn).parameters})
    return len(tests)


def _compose_with(extra_conf: Path) -> Callable[..., Any]:
    """tests/conftest.py's compose_cfg, with `extra_conf` on Hydra's search path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xai_bench.tracking.resolvers import register_resolvers

    register_resolvers()

    def compose_cfg(*overrides: str, config_name: str = "train") -> Any:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            search = f"hydra.searchpath=[file://{extra_conf}]"
            return compose(config_name, overrides=[search, *overrides], return_hydra_config=True)

    return compose_cfg


def _check_method() -> None:
    import timm
    import torch

    from xai_bench.explain import METHODS, build_method

    assert "gradient_norm" in METHODS
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1,
                              num_classes=2)
    out = build_method("gradient_norm", target=1)(model.eval(), torch.randn(3, 3, 32, 32))
    assert out.maps.shape == out.raw.shape == (3, 32, 32) and out.target.tolist() == [1] * 3
    assert torch.isfinite(out.maps).all()


def _check_metric() -> None:
    import torch

    from xai_bench.metrics import METRICS, EvalBatch, build_metric

    assert "map_entropy" in METRICS
    metric = build_metric("map_entropy", key="entropy")
    maps = torch.rand(4, 8, 8)
    metric.update(EvalBatch(images=torch.zeros(4, 3, 8, 8), labels=torch.zeros(4),
                            ids=torch.tensor([3, 1, 2, 0]), maps=maps, target=torch.zeros(4),
                            logits=torch.zeros(4, 2), model=None, method=None))
    table = metric.compute()  # rows sorted by image id
    entropy = table["entropy"]
    assert table["id"].tolist() == [0, 1, 2, 3] and entropy.shape == (4,)
    assert bool(((entropy > 0) & (entropy <= math.log(64) + 1e-5)).all())  # 8 x 8 pixels


def _check_dataset(compose_cfg: Callable[..., Any]) -> None:
    cfg = compose_cfg("dataset=mydata")
    assert cfg.dataset.name == "mydata"
    assert cfg.dataset._target_ == "xai_bench.data.ImageTableDataModule"
    assert cfg.dataset.transforms.eval._target_ == "albumentations.Compose"


def _check_model() -> None:
    import timm
    import torch

    from xai_bench.models import build_model

    assert timm.is_model("tiny_cnn")
    model = build_model("tiny_cnn", num_classes=3, img_size=16)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3) and model.xai_arch == "tiny_cnn"


def run_examples(tmp: Path) -> None:
    blocks = json.loads((tmp / "blocks.json").read_text())
    extra_conf = tmp / "conf"
    (extra_conf / "dataset").mkdir(parents=True)
    (extra_conf / "dataset" / "mydata.yaml").write_text(blocks["dataset"] + "\n")
    fixtures: dict[str, Any] = {"compose_cfg": _compose_with(extra_conf)}
    checks: dict[str, Callable[[], None]] = {
        "method": _check_method, "metric": _check_metric, "model": _check_model,
        "dataset": lambda: _check_dataset(fixtures["compose_cfg"]),
    }
    for kind in KINDS:
        if kind != "dataset":  # the dataset example is a config file, on the search path above
            _as_module(f"docs_extending_{kind}", blocks[kind])
        checks[kind]()
        fixtures["tmp_path"] = tmp / f"test-{kind}"
        fixtures["tmp_path"].mkdir()
        test_module = _as_module(f"docs_extending_test_{kind}", blocks[f"test-{kind}"])
        assert _run_tests(test_module, fixtures) == 1
        print(f"ok:{kind}", flush=True)


if __name__ == "__main__":
    run_examples(Path(sys.argv[1]))
