"""Quantus 0.6 adapters for scripts/bench_metrics.py: one row per metric both libraries have.

Each `Row` names our registered metric, its settings, the column compared, and how Quantus
computes the same scores on the same model, images, maps and masks: settings bridged as in
tests/test_metrics_<family>.py (features in steps of C k channel elements = k pixels, Quantus'
np.random draws replaced by our seeded draws, np.trapz restored for numpy 2; the rows that need
more, a one-channel view of the model or the randomisation tests' layer seeding, are in
scripts/bench_metrics_bridges.py), or the reason it cannot (`na`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import bench_metrics_bridges as B
import numpy as np
import torch
from bench_metrics_bridges import _arr, _q, feed, trapz
from torch import nn

from xai_bench.utils.seeded_noise import seeded_normal, seeded_permutation, seeded_uniform


@dataclass
class Ctx:
    """What every Quantus call sees: a CPU copy of the model, numpy inputs, our explain."""

    model: nn.Module
    x: np.ndarray  # (B, C, H, W)
    y: np.ndarray  # (B,) the explained class (= the prediction)
    maps: np.ndarray  # (B, H, W) in [0, 1]
    masks: np.ndarray | None  # (B, H, W) float {0, 1}
    ids: torch.Tensor  # (B,) image ids (the key of our seeded draws)
    explain: Callable[..., np.ndarray]  # Quantus explain_func (our method on the CPU model)
    args: Any  # the CLI settings
    classes: int = 2  # the model's number of classes


Pair = Callable[[dict[str, torch.Tensor], Any], tuple[np.ndarray, np.ndarray]]


@dataclass
class Row:
    """One benchmark row: our metric `name` with `ours` settings (a function of the CLI args),
    compared on `column` with `quantus(ctx)` (per-image scores; `pair` matches our table with
    what it returns where that is not one score per image); `na` says why the peer is not run,
    `incomparable` why it is run and timed but its scores are not ours; `note` what was
    bridged. `variant` names the inputs both run on (bench_metrics_bridges.make_variant; "rgb":
    the benchmark's), `patch` a context our runs need (the randomisation tests' seeding)."""

    name: str
    ours: Callable[[Any], dict[str, Any]] = lambda a: {}
    quantus: Callable[[Ctx], Any] | None = None
    column: str | None = None  # default: the metric's first column
    na: str = ""
    note: str = ""
    exclude: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None)
    pair: Pair | None = None
    incomparable: str = ""
    variant: str = "rgb"
    patch: Callable[[], AbstractContextManager[None]] | None = None
    label: str = ""  # the row's name in the table (default: metric[:column])


@contextmanager
def any_step(active: bool) -> Iterator[None]:
    """Quantus asserts that features_in_step divides H W, though its steps are of C H W channel
    elements: lifted, so that steps of 3 k elements (k whole pixels) are allowed."""
    asserts = _q().helpers.asserts
    original = asserts.assert_features_in_step
    if active:
        asserts.assert_features_in_step = lambda **_: None
    try:
        yield
    finally:
        asserts.assert_features_in_step = original


def maps_only(cls: str, masks: bool = True, per_image: bool = False,
              **init: Any) -> Callable[[Ctx], np.ndarray]:
    """A map-only Quantus metric on the whole batch (or one image at a time where its scores
    depend on the batch)."""

    def run(c: Ctx) -> np.ndarray:
        a, s = c.maps[:, None].astype(np.float32), c.masks[:, None]
        groups = [slice(i, i + 1) for i in range(len(a))] if per_image else [slice(0, len(a))]
        out: list[float] = []
        for g in groups:
            b = len(a[g])
            metric = getattr(_q(), cls)(disable_warnings=True, **init)
            out += list(metric(model=None, x_batch=np.zeros((b, 1, *a.shape[2:]), np.float32),
                               y_batch=np.zeros(b, np.int64), a_batch=a[g],
                               s_batch=s[g] if masks else None, channel_first=True))
        return _arr(out)

    return run


def model_call(cls: str, explain: bool = False, rgb: bool = False,
               **init: Any) -> Callable[[Ctx], np.ndarray]:
    """A model-bound Quantus metric on the batch, on the CPU copy of the model. `rgb`: the map
    repeated over the channels, so that its C k channel elements per step (which must divide
    the map's size; 3 does not divide 224 x 224) are k whole pixels: Quantus sorts the C copies
    of a pixel together where the map's values are distinct, as the tests check."""

    def run(c: Ctx) -> np.ndarray:
        metric = getattr(_q(), cls)(disable_warnings=True, **init)
        extra = {"explain_func": c.explain} if explain else {}
        maps = c.maps[:, None]
        if rgb:
            maps = np.repeat(maps, c.x.shape[1], axis=1)
        with trapz(), any_step(rgb):
            return _arr(metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=maps,
                               device="cpu", **extra))

    return run


def _uniform(c: Ctx, low: float, high: float, samples: int) -> Iterator[np.ndarray]:
    shape = tuple(c.x.shape[1:])
    return (seeded_uniform(c.ids, shape, seed=0, stream=j, low=low, high=high).flatten(1)
            .double().numpy() for j in range(samples))


def fed(draw: str, make: Callable[[Ctx], Iterator[np.ndarray]],
        inner: Callable[[Ctx], Callable[[Ctx], np.ndarray]]) -> Callable[[Ctx], np.ndarray]:
    """`inner(ctx)` run with np.random.<draw> returning `make(ctx)`'s draws."""

    def run(c: Ctx) -> np.ndarray:
        with feed(draw, make(c)):
            return inner(c)(c)

    return run


def region_perturbation(c: Ctx) -> np.ndarray:
    a = c.args
    metric = _q().RegionPerturbation(patch_size=a.region, order="morf",
                                     regions_evaluation=a.steps, normalise=False, abs=False,
                                     perturb_baseline="black", disable_warnings=True)
    curves = _arr(metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=c.maps[:, None],
                         device="cpu"))
    return curves.sum(axis=1) / (a.steps + 1)


def selectivity(c: Ctx) -> np.ndarray:
    metric = _q().Selectivity(patch_size=c.args.patch, normalise=False, abs=False,
                              disable_warnings=True)
    metric(model=c.model, x_batch=c.x, y_batch=c.y, a_batch=c.maps[:, None], device="cpu")
    return _arr([np.trapezoid(curve) for curve in metric.evaluation_scores])


def monotonicity(c: Ctx) -> np.ndarray:
    """Quantus' own perturb_func writes the baseline over the baseline (every image True):
    bridged with one that inserts x, as the tests do."""
    flat = c.x.reshape(len(c.x), -1)

    def insert_x(arr: np.ndarray, indices: np.ndarray, **_: Any) -> np.ndarray:
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    return model_call("Monotonicity", rgb=True, features_in_step=3 * c.args.features,
                      normalise=False, abs=False, perturb_func=insert_x)(c)


def faithfulness_correlation(c: Ctx) -> np.ndarray:
    """np.random.choice(C H W, C n) per run and image gets our pixel sets, all channels."""
    a, hw = c.args, c.maps.shape[1] * c.maps.shape[2]
    channels = c.x.shape[1]
    subsets = [seeded_permutation(c.ids, hw, seed=0, stream=r)[:, :a.subset] for r in
               range(a.samples)]
    draws = iter([torch.cat([ch * hw + s for ch in range(channels)]).numpy()
                  for subset in subsets for s in subset])
    with feed("choice", draws):
        return model_call("FaithfulnessCorrelation", subset_size=channels * a.subset,
                          nr_runs=a.samples, perturb_baseline="black", return_aggregate=False,
                          normalise=False, abs=False)(c)


def monotonicity_correlation(c: Ctx) -> np.ndarray:
    """Quantus' "uniform" baseline: one np.random.uniform value per image, step and draw."""
    a, hw = c.args, c.maps.shape[1] * c.maps.shape[2]
    n_steps = -(-hw // a.features)
    draws = iter([seeded_uniform(c.ids, (1,), seed=0, stream=t)[:, 0].double().numpy()
                  for t in range(n_steps * a.samples)])
    with feed("uniform", draws):
        return model_call("MonotonicityCorrelation", rgb=True,
                          features_in_step=3 * a.features,
                          nr_samples=a.samples, return_aggregate=False, normalise=False,
                          abs=False)(c)


def _relative(cls: str, **init: Any) -> Callable[[Ctx], np.ndarray]:
    def inner(c: Ctx) -> Callable[[Ctx], np.ndarray]:
        return model_call(cls, explain=True, nr_samples=c.args.samples,
                          return_nan_when_prediction_changes=False,
                          perturb_func_kwargs={"lower_bound": 0.02, "upper_bound": 0.2}, **init)

    return fed("uniform", lambda c: _uniform(c, 0.02, 0.2, c.args.samples), inner)


def _finite_both(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    return np.isfinite(ours) & np.isfinite(theirs)


SENSITIVITY_FRACTIONS = (0.1, 0.5)


def _sensitivity_n_settings(a: Any) -> dict[str, Any]:
    return {"fractions": list(SENSITIVITY_FRACTIONS), "runs": a.samples}


def _sensitivity_n(c: Ctx) -> np.ndarray:
    from xai_bench.metrics import build_metric

    metric = build_metric("sensitivity_n", **_sensitivity_n_settings(c.args))
    return B.sensitivity_n(c, metric.sizes(*c.maps.shape[1:]))


_LAYERS = ("every module, layers seeded as Quantus', class token / position embedding frozen "
           "(Quantus never redraws them)")


ROWS: list[Row] = [
    # ---- localisation / complexity: map only
    Row("pointing_game", quantus=maps_only("PointingGame", normalise=False, abs=False)),
    Row("relevance_mass", quantus=maps_only("RelevanceMassAccuracy", normalise=False,
                                            abs=False)),
    Row("relevance_rank", quantus=maps_only("RelevanceRankAccuracy", normalise=False,
                                            abs=False)),
    Row("top_k_intersection", lambda a: {"k": a.k},
        quantus=lambda c: maps_only("TopKIntersection", k=c.args.k)(c)),
    Row("auc", quantus=maps_only("AUC")),
    Row("attribution_localisation", quantus=maps_only("AttributionLocalisation")),
    Row("sparseness", quantus=maps_only("Sparseness", masks=False),
        note="Quantus adds 1e-7 to every |a| / max|a|"),
    Row("complexity", quantus=maps_only("Complexity", masks=False, per_image=True),
        note="Quantus normalises by the batch max: one image at a time"),
    Row("effective_complexity", quantus=maps_only("EffectiveComplexity", masks=False,
                                                  per_image=True),
        note="Quantus normalises by the first map's max: one image at a time"),
    # ---- faithfulness
    Row("aopc", lambda a: {"region": a.region, "order": "morf", "fill": "min",
                           "steps": a.steps, "only_correct": False},
        quantus=region_perturbation, note="AOPC = sum of its curve / (steps + 1)"),
    Row("pixel_flipping", lambda a: {"features_in_step": a.features},
        quantus=lambda c: model_call("PixelFlipping", rgb=True,
                                     features_in_step=3 * c.args.features,
                                     normalise=False, abs=False,
                                     return_auc_per_sample=True)(c)),
    Row("monotonicity", lambda a: {"features_in_step": a.features}, quantus=monotonicity,
        note="its perturb_func fixed to insert x"),
    Row("selectivity", lambda a: {"patch_size": a.patch}, quantus=selectivity),
    Row("irof", lambda a: {"n_segments": a.segments, "fill": "min"}, quantus=B.irof,
        variant="gray", note="1-channel view (Quantus asserts on RGB), one image at a time"),
    Row("road", lambda a: {"percentages": list(B.ROAD_PERCENTAGES), "orders": ["morf"]},
        quantus=B.road, variant="gray", column="road/morf",
        note="1-channel view (Quantus: IndexError on RGB), MoRF, same noise"),
    Row("faithfulness_correlation", lambda a: {"subset_size": a.subset, "runs": a.samples},
        quantus=faithfulness_correlation),
    Row("faithfulness_estimate", lambda a: {"features_in_step": a.features},
        quantus=lambda c: model_call("FaithfulnessEstimate", rgb=True,
                                     return_aggregate=False,
                                     features_in_step=3 * c.args.features,
                                     perturb_baseline="black", normalise=False, abs=False)(c)),
    Row("monotonicity_correlation", lambda a: {"features_in_step": a.features,
                                               "samples": a.samples},
        quantus=monotonicity_correlation),
    Row("infidelity", lambda a: {"samples": a.samples, "std": B.INFIDELITY_STD},
        quantus=B.infidelity, note="peer: captum's infidelity, same draws"),
    Row("sensitivity_n", _sensitivity_n_settings, quantus=_sensitivity_n,
        pair=B.columns(*[f"sensitivity_n@{f:g}" for f in SENSITIVITY_FRACTIONS]),
        label="sensitivity_n (both n)",
        note="peer: Quantus' FaithfulnessCorrelation at each n, same pixel sets"),
    Row("sensitivity_n", _sensitivity_n_settings, label="sensitivity_n vs SensitivityN",
        quantus=lambda c: model_call("SensitivityN", rgb=True,
                                     features_in_step=3 * c.args.features,
                                     normalise=False, abs=False, return_aggregate=False)(c),
        incomparable="different measure: Quantus' SensitivityN correlates over the images, "
                     "per n (timed only)"),
    Row("sufficiency", quantus=model_call("Sufficiency", return_aggregate=False),
        exclude=_finite_both, note="images without neighbours: Quantus 0, ours NaN (left out)"),
    # ---- robustness
    Row("max_sensitivity", lambda a: {"radius": a.radius, "samples": a.samples,
                                      "normalise": True, "only_correct": False},
        quantus=fed("uniform", lambda c: _uniform(c, -c.args.radius, c.args.radius,
                                                  c.args.samples),
                    lambda c: model_call("MaxSensitivity", explain=True,
                                         nr_samples=c.args.samples,
                                         lower_bound=c.args.radius, normalise=False,
                                         abs=False)),
        note="same draws; / ||map|| on both sides (Quantus always divides)"),
    Row("avg_sensitivity", lambda a: {"radius": a.radius, "samples": a.samples},
        quantus=fed("uniform", lambda c: _uniform(c, -c.args.radius, c.args.radius,
                                                  c.args.samples),
                    lambda c: model_call("AvgSensitivity", explain=True,
                                         nr_samples=c.args.samples,
                                         lower_bound=c.args.radius))),
    Row("local_lipschitz_estimate", lambda a: {"std": 0.1, "samples": a.samples},
        quantus=fed("normal", lambda c: (seeded_normal(c.ids, tuple(c.x.shape[1:]), seed=0,
                                                       stream=j, std=0.1).flatten(1).double()
                                         .numpy() for j in range(c.args.samples)),
                    lambda c: model_call("LocalLipschitzEstimate", explain=True,
                                         nr_samples=c.args.samples, perturb_std=0.1,
                                         normalise=False))),
    Row("continuity", lambda a: {"steps": a.steps},
        quantus=lambda c: model_call("Continuity", explain=True, nr_steps=c.args.steps,
                                     normalise=False)(c)),
    Row("relative_input_stability", lambda a: {"samples": a.samples, "exclude_changed": False},
        quantus=_relative("RelativeInputStability")),
    Row("relative_output_stability", lambda a: {"samples": a.samples, "exclude_changed": False},
        quantus=_relative("RelativeOutputStability")),
    Row("relative_representation_stability",
        lambda a: {"samples": a.samples, "exclude_changed": False, "layer": "blocks.11"},
        quantus=_relative("RelativeRepresentationStability", layer_names=["blocks.11"])),
    Row("consistency", lambda a: {"discretise": "rank"},
        quantus=lambda c: model_call("Consistency", explain=True,
                                     discretise_func=_q().functions.discretise_func.rank)(c),
        exclude=_finite_both, note="an image alone in its class: Quantus 0, ours NaN"),
    # ---- randomisation / axiomatic
    Row("parameter_randomisation",
        lambda a: {"granularity": "modules", "order": "cascading", "similarity": ["spearman"]},
        quantus=B.mprt, pair=B.by_layer, exclude=_finite_both, variant="frozen",
        patch=B.quantus_layer_seeding, label="parameter_randomisation (every layer)",
        note=_LAYERS),
    Row("random_logit", lambda a: {"similarity": "spearman"}, quantus=B.random_logit,
        note="its np.random.randint gets our other class; Spearman on both sides"),
    Row("smooth_mprt", lambda a: {"granularity": "modules", "samples": a.samples,
                                  "noise": B.SMOOTH_NOISE, "skip_layers": True},
        quantus=B.smooth_mprt, pair=B.by_layer, exclude=_finite_both, variant="frozen",
        patch=B.quantus_layer_seeding, label="smooth_mprt (last layer)",
        note=_LAYERS + ", same noise, skip_layers"),
    Row("efficient_mprt", lambda a: {"granularity": "modules"}, quantus=B.efficient_mprt,
        variant="frozen", patch=B.quantus_layer_seeding, note=_LAYERS),
    Row("non_sensitivity", lambda a: {"features_in_step": 1, "fill": "black", "eps": 1e-5},
        quantus=B.non_sensitivity, variant="gray_blocks",
        note="1-channel view on --region px blocks: Quantus fails on RGB and cannot group "
             "pixels"),
    Row("input_invariance", lambda a: {"shift": -1.0}, quantus=B.input_invariance,
        note="Quantus shifts every element (its default skips one), patch conv registered "
             "first"),
    Row("completeness", lambda a: {"baseline": "black", "rtol": 0.0, "atol": 0.0},
        quantus=model_call("Completeness", abs=False, normalise=False,
                           perturb_baseline="black")),
]
