"""Every registered method keeps the catalogue's promises, checked on tiny models, not assumed.

- it declares a family (one of FAMILIES) and the model kinds it explains (`models`, a non-empty
  subset of MODEL_KINDS), and refuses, with a ConfigError, a kind it does not declare;
- the model passes counted during one call on a batch of B images are exactly its declared
  `passes(model, h, w)` per image, on every kind it declares (and for the settings that change
  them: Integrated Gradients' steps and internal batch, Grad-CAM's aug_smooth);
- it has a `conf/method/` config, and docs/methods.md's catalogue lists exactly the registry
  with each method's family, models and passes at the default settings.

How passes are counted (`PassCounter`). A FORWARD is an image entering the model: the rows of
the input of the model's first module (the first leaf a forward runs: a ViT's patch-embedding
conv, a CNN's stem), over B. That is the top module's own input for `model(x)`, and it also sees
forwards that do not go through `model.forward`: Chefer's taped forward runs the model's modules
one by one, and captum's DeepLift doubles the batch (images and baselines) in a pre-hook.
A BACKWARD is one call of torch.autograd.grad / torch.autograd.backward / Tensor.backward
made during the explanation (all three are patched; a call nested in another counts once),
weighted by the rows of the model's logits it propagates through, over B: a tensor hook on the
output of the model's last module (the classifier head) adds the rows of the gradient that
reaches it to the running call. Neither the call's outputs nor its inputs give that weight on
their own: captum passes B x n separate scalars (`torch.unbind` of the selected logits) where
hand-written code passes one summed scalar, the inputs may be the images, a chunk of
interpolated images, a layer's activations or the attention maps, and captum's DeepLift runs its
backward through the images and their baselines (2 B rows) with inputs of B rows; every backward
of an attribution starts at the logits, whatever the code around it. A call whose backward does
not reach the logits (none today) counts by the rows of its inputs, and gradients that reach
the logits outside a patched call (an unpatched entry point) are counted too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import timm
import torch
from conftest import REPO_ROOT
from torch import nn

from xai_bench.explain import FAMILIES, METHODS, MODEL_KINDS, ExplainMethod, Passes, build_method
from xai_bench.models import build_model
from xai_bench.utils.errors import ConfigError

B, SIZE, DOC_SIZE = 3, 32, 224
# cheaper settings than the defaults, for the counting tests only (the declarations must hold
# for any setting; the docs are checked at the defaults)
SETTINGS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 5, "internal_batch_size": 4},  # 15 images in 4 chunks
    "rise": {"n_masks": 40, "batch_size": 16},  # chunks that split images' masks
    "lime": {"samples": 30, "batch_size": 16},
    "kernel_shap": {"samples": 30, "batch_size": 16},
    **{name: {"samples": 7, "batch_size": 8} for name in ("smoothgrad", "smoothgrad_sq", "vargrad",
                                                           "gradient_shap")},
    "occlusion": {"window": 8, "stride": 8, "batch_size": 10},
}
# and on one model kind: a CNN stage with fewer channels than the last one's 512
KIND_SETTINGS: dict[tuple[str, str], dict[str, Any]] = {
    ("scorecam", "cnn"): {"layer": "layer2", "batch_size": 100},
    ("ablationcam", "cnn"): {"layer": "layer2", "batch_size": 100},
}
# settings that change the passes, counted as extra cases
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("integrated_gradients", {"n_steps": 3, "internal_batch_size": None}),
    ("integrated_gradients", {"n_steps": 4, "method": "riemann_trapezoid",
                              "internal_batch_size": 1}),
    ("gradcam", {"aug_smooth": True}),
    ("hirescam", {"aug_smooth": True, "eigen_smooth": True}),
    ("gradcam_study", {"aug_smooth": False}),
    ("gradcam", {"differentiable": True}),
]


def _build(name: str, extra: dict[str, Any] | None = None) -> ExplainMethod:
    return build_method(name, **{**SETTINGS.get(name, {}), **(extra or {})})


def _kinds(method: ExplainMethod) -> tuple[str, ...]:
    return tuple(method.models)  # an instance may narrow its class's kinds (a wrapped method)


def _declared(name: str, extra: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The kinds to parametrise over; a method that cannot be built fails in its tests, not
    while collecting everyone's."""
    try:
        return _kinds(_build(name, extra))
    except Exception:
        return tuple(METHODS[name].models)


NAMES = sorted(METHODS)
CASES = [(name, kind, {}) for name in NAMES for kind in _declared(name)]
CASES += [(name, kind, extra) for name, extra in VARIANTS if name in METHODS
          for kind in _declared(name, extra)]


def _net(kind: str, size: int = SIZE) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        if size == DOC_SIZE:  # the catalogue's reference ViT: vit_tiny at 224 px
            return timm.create_model("vit_tiny_patch16_224", num_classes=2).eval()
        return build_model("vit_tiny_patch16_224", 2, size, patch_size=8, depth=2, embed_dim=32,
                           num_heads=2).eval()
    return build_model("resnet18", 2, size).eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {kind: _net(kind) for kind in MODEL_KINDS}


def _images() -> torch.Tensor:
    return torch.randn(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _rows(tensors: Any) -> int:
    """The largest leading dimension among tensors (0 for scalars)."""
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return max([t.shape[0] for t in tensors or [] if isinstance(t, torch.Tensor) and t.dim()],
               default=0)


class PassCounter:
    """Counts the forward and backward rows of one model (the module docstring's rules)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward_rows = self.backward_rows = 0
        self.calls: list[int] = []  # rows through the logits, per open backward call
        leaves = [m for m in model.modules() if not list(m.children())]
        order: list[nn.Module] = []
        handles = [m.register_forward_hook(lambda m, _a, _o: order.append(m)) for m in leaves]
        try:
            with torch.no_grad():
                model(_images()[:1])
        finally:
            for handle in handles:
                handle.remove()
        self.entry, self.exit = order[0], order[-1]

    def _forward(self, _m: nn.Module, args: tuple, _out: Any) -> None:
        self.forward_rows += args[0].shape[0]

    def _logits(self, _m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._logit_grad)

    def _logit_grad(self, grad: torch.Tensor) -> None:
        if self.calls:
            self.calls[-1] += grad.shape[0]
        else:
            self.backward_rows += grad.shape[0]

    def _counted(self, fn: Any, rows_of: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nested = bool(self.calls)
            if not nested:
                self.calls.append(0)
            try:
                return fn(*args, **kwargs)
            finally:
                if not nested:
                    rows = self.calls.pop()
                    self.backward_rows += rows or rows_of(*args, **kwargs)

        return wrapper

    @contextmanager
    def counting(self) -> Iterator[PassCounter]:
        def grad_rows(outputs: Any, inputs: Any = None, *_a: Any, **kw: Any) -> int:
            return _rows(kw.get("inputs", inputs))

        def backward_rows(tensors: Any = None, *_a: Any, **kw: Any) -> int:
            return _rows(kw.get("inputs")) or _rows(tensors) or B

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.autograd, "grad", self._counted(torch.autograd.grad, grad_rows))
            patch.setattr(torch.autograd, "backward",
                          self._counted(torch.autograd.backward, backward_rows))
            patch.setattr(torch.Tensor, "backward",
                          self._counted(torch.Tensor.backward, backward_rows))
            handles = [self.entry.register_forward_hook(self._forward),
                       self.exit.register_forward_hook(self._logits)]
            try:
                yield self
            finally:
                for handle in handles:
                    handle.remove()

    def passes(self) -> Passes:
        return Passes(forwards=self.forward_rows / B, backwards=self.backward_rows / B)


def test_the_registry_is_not_empty() -> None:
    assert len(NAMES) >= 16  # guards the parametrisations below against an empty registry


def test_the_counter_counts_a_plain_and_a_captum_gradient(nets: dict[str, nn.Module]) -> None:
    """The rules on known cases: one forward + backward by hand and through captum (B scalars),
    a backward twice over a retained graph, and forwards that do not need the logits' grad."""
    from captum.attr import Saliency

    model = nets["cnn"]
    x = _images().requires_grad_(True)
    counter = PassCounter(model)
    with counter.counting():
        torch.autograd.grad(model(x)[:, 0].sum(), x)
        Saliency(model).attribute(x, target=0)
        out = model(x)[:, 1].sum()
        out.backward(retain_graph=True)
        out.backward()
        with torch.no_grad():
            model(torch.cat([x, x]))
    assert counter.passes() == Passes(forwards=5, backwards=4)


@pytest.mark.parametrize(("name", "kind", "extra"), CASES,
                         ids=[f"{n}-{k}" + "".join(f"-{s}={v}" for s, v in e.items())
                              for n, k, e in CASES])
def test_the_declared_passes_are_counted(name: str, kind: str, extra: dict[str, Any],
                                         nets: dict[str, nn.Module]) -> None:
    model, method = nets[kind], _build(name, {**KIND_SETTINGS.get((name, kind), {}), **extra})
    counter = PassCounter(model)
    with counter.counting():
        out = method(model, _images(), ids=torch.arange(B) * 5)
    assert out.maps.shape == (B, SIZE, SIZE)
    declared = method.passes(model, SIZE, SIZE)
    assert isinstance(declared, Passes)
    counted = counter.passes()
    assert (counted.forwards, counted.backwards) == pytest.approx(
        (declared.forwards, declared.backwards), rel=1e-9), (name, kind, counted, declared)


@pytest.mark.parametrize("name", NAMES)
def test_family_and_models_are_declared(name: str) -> None:
    cls, method = METHODS[name], _build(name)
    assert cls.family in FAMILIES, (name, cls.family)
    kinds = _kinds(method)
    assert kinds and set(kinds) <= set(MODEL_KINDS) and len(set(kinds)) == len(kinds), kinds


UNDECLARED = [(name, kind) for name in NAMES for kind in MODEL_KINDS
              if kind not in _declared(name)]


@pytest.mark.parametrize(("name", "kind"), UNDECLARED)
def test_a_method_refuses_a_model_kind_it_does_not_declare(name: str, kind: str,
                                                           nets: dict[str, nn.Module]) -> None:
    with pytest.raises(ConfigError):
        _build(name)(nets[kind], _images())


def test_every_registered_method_has_a_config() -> None:
    configured = {}
    for path in (REPO_ROOT / "conf" / "method").glob("*.yaml"):
        found = re.findall(r"^name: (\w+)\s*$", path.read_text(encoding="utf-8"), flags=re.M)
        configured[path.stem] = found[0] if found else None
    assert {n for n in NAMES if configured.get(n) != n} == set()


# --------------------------------------------------------------------------------------------
# the docs catalogue: | `name` | family | models | passes per image | peer |

ROW = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \| (?P<family>[^|]+?) \| (?P<models>[^|]+?) \| "
                 r"(?P<passes>[^|]+?) \| (?P<peer>[^|]+?) \|$", re.M)
PASSES = re.compile(r"^(?P<f>.+?) F(?: \+ (?P<b>.+) B)?$")
EXPRESSION = re.compile(r"^[\w\s.+\-*/()]+$")


def _catalogue() -> dict[str, dict[str, str]]:
    text = (REPO_ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    assert "\n## Catalogue\n" in text, "docs/methods.md has no '## Catalogue' section"
    section = text.split("\n## Catalogue\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, dict[str, str]] = {}
    for match in ROW.finditer(section):
        assert match["name"] not in rows, f"{match['name']} is in the catalogue twice"
        rows[match["name"]] = match.groupdict()
    return rows


def _layer_channels(model: nn.Module, method: ExplainMethod) -> int:
    """C: the channels of the output of the method's layer (CAM methods) on a DOC_SIZE image."""
    from xai_bench.explain.cam import resolve_layer

    shapes: list[torch.Size] = []
    module = resolve_layer(model, getattr(method, "layer", None))
    handle = module.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, DOC_SIZE, DOC_SIZE))
    finally:
        handle.remove()
    return int(shapes[0][1] if len(shapes[0]) == 4 else shapes[0][-1])


def _evaluate(cell: str, method: ExplainMethod, model: nn.Module) -> Passes:
    """'a F + b B' (the text before any ';'), a and b numbers or expressions in the method's
    numeric settings, H, W (the image size) and C (the channels of a CAM method's layer), at
    the method's default settings."""
    match = PASSES.match(cell.split(";", 1)[0].strip())
    assert match, f"passes {cell!r} is not written as 'a F + b B'"
    names: dict[str, Any] = {k: v for k, v in vars(method).items()
                             if isinstance(v, int | float) and not isinstance(v, bool)}
    names.update(H=DOC_SIZE, W=DOC_SIZE, ceil=math.ceil, floor=math.floor, min=min, max=max)
    if re.search(r"\bC\b", match.group(0)):
        names["C"] = _layer_channels(model, method)
    values = []
    for expr in (match["f"], match["b"] or "0"):
        assert EXPRESSION.match(expr), expr
        values.append(eval(expr, {"__builtins__": {}}, names))  # noqa: S307 - docs text, checked
    return Passes(forwards=values[0], backwards=values[1])


@pytest.fixture(scope="module")
def doc_nets() -> dict[str, nn.Module]:
    return {kind: _net(kind, DOC_SIZE) for kind in MODEL_KINDS}


def test_the_docs_catalogue_lists_every_method_as_declared(doc_nets: dict[str, nn.Module]) -> None:
    rows = _catalogue()
    assert set(rows) == set(NAMES), (sorted(set(NAMES) - set(rows)), sorted(set(rows) - set(NAMES)))
    wrong = []
    for name in NAMES:
        row, method = rows[name], build_method(name)
        kinds = tuple(k.strip() for k in row["models"].split(","))
        if row["family"] != METHODS[name].family or set(kinds) != set(_kinds(method)):
            wrong.append((name, row["family"], kinds))
        for kind in _kinds(method):
            declared = method.passes(doc_nets[kind], DOC_SIZE, DOC_SIZE)
            written = _evaluate(row["passes"], method, doc_nets[kind])
            if (written.forwards, written.backwards) != pytest.approx(
                    (declared.forwards, declared.backwards)):
                wrong.append((name, kind, row["passes"], declared))
        if not row["peer"].strip():
            wrong.append((name, "no peer column (write '-')"))
    assert not wrong, wrong
