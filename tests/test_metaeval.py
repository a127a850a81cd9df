"""The meta-evaluation (Hedström et al. 2023): IAC / IEC by hand on a made-up score table, the
seeded perturbations, the scoring loop on a tiny model, and the CLI end to end on a tiny run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fails_cleanly, run_cli
from torch import nn

from xai_bench.metaeval import perturbations as P
from xai_bench.metaeval.run import MetaSettings, collect_scores, judge
from xai_bench.metaeval.scores import (
    MetaScores,
    Thresholds,
    iac,
    iec_ar,
    iec_nr,
    meta_scores,
    verdict,
    wilcoxon_p,
)
from xai_bench.utils.errors import ConfigError

NAN = float("nan")

# --- the formulas, by hand -------------------------------------------------------------------
# Exact two-sided Wilcoxon signed-rank p-values without zeros or ties: p = 2 P(W <= T), T the
# smaller rank sum, W's null distribution = the subset sums of {1..n} (each subset 1 / 2^n).
#   n = 4, every difference positive: T = 0, p = 2 * 1/16 = 0.125
#   n = 5, every difference positive: T = 0, p = 2 * 1/32 = 0.0625
#   n = 5, only the 2nd smallest |difference| positive: T = 2, P(W <= 2) = 3/32, p = 0.1875
#   identical scores: every difference is zero, split evenly: T = n(n+1)/4, p = 1


def test_wilcoxon_p_values_by_hand() -> None:
    q = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert wilcoxon_p(q[:4], q[:4] + [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.125)
    assert wilcoxon_p(q, q - [0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625)
    assert wilcoxon_p(q, q + [-0.05, 0.1, -0.2, -0.3, -0.9]) == pytest.approx(0.1875)
    assert wilcoxon_p(q, q) == pytest.approx(1.0)
    # a NaN on either side drops the pair: the 5-image case becomes the 4-image one
    assert wilcoxon_p(np.r_[q[:4], NAN], np.r_[q[:4] + [0.1, 0.2, 0.3, 0.4], 7.0]) == \
        pytest.approx(0.125)
    assert math.isnan(wilcoxon_p(np.array([NAN]), np.array([1.0])))


# L = 2 methods (A, B), N = 5 images, K = 2 draws of each kind.
Q = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],  # A
              [0.1, 0.2, 0.3, 0.4, 0.95]])  # B
# minor perturbations. Draw 0 keeps every image: A moves up by 0.01..0.05 (all positive, p =
# 0.0625), B stays (p = 1), no rank changes (U = 1). Draw 1 drops image 4 (its prediction
# changed): A stays (p = 1); B moves up by 0.85, 0.05, 0.03, 0.04 (p = 0.125) and overtakes A on
# image 0: 2 of the 8 (image, rank) places change (U = 0.75).
Q_NR = np.array([
    [[0.91, 0.82, 0.73, 0.64, 0.55], [0.1, 0.2, 0.3, 0.4, 0.95]],
    [[0.9, 0.8, 0.7, 0.6, 0.0], [0.95, 0.25, 0.33, 0.44, 0.0]],
])
KEEP_NR = np.array([[True] * 5, [True, True, True, True, False]])
# disruptive perturbations. Draw 0 keeps every image: A drops by 0.1..0.45 (p = 0.0625, 1 - p =
# 0.9375, 5 of 5 worse); B: differences -0.05, +0.1, -0.2, -0.3, -0.9 (p = 0.1875, 1 - p = 0.8125,
# 4 of 5 worse). Draw 1 keeps images 0-3 (image 4 is NaN, but not judged): A stays (1 - p = 0,
# none worse); B rises by 0.01..0.04 (p = 0.125, 1 - p = 0.875, none worse).
Q_AR = np.array([
    [[0.8, 0.6, 0.4, 0.2, 0.05], [0.05, 0.3, 0.1, 0.1, 0.05]],
    [[0.9, 0.8, 0.7, 0.6, NAN], [0.11, 0.22, 0.33, 0.44, NAN]],
])
KEEP_AR = np.array([[True] * 5, [True, True, True, True, False]])

IAC_NR = (0.0625 + 1 + 1 + 0.125) / 4  # 0.546875
IEC_NR = (1.0 + 0.75) / 2  # 0.875
IAC_AR = (0.9375 + 0.8125 + 0 + 0.875) / 4  # 0.65625
IEC_AR = (9 / 10 + 0 / 8) / 2  # 0.45 (higher is better)
IEC_AR_LOWER = (1 / 10 + 4 / 8) / 2  # 0.3 (lower is better: B's one rise, then B's four)


def test_iac_and_iec_on_a_made_up_table() -> None:
    assert iac(Q, Q_NR, KEEP_NR, reactive=False) == pytest.approx(IAC_NR)
    assert iec_nr(Q, Q_NR, KEEP_NR) == pytest.approx(IEC_NR)
    assert iac(Q, Q_AR, KEEP_AR, reactive=True) == pytest.approx(IAC_AR)
    assert iec_ar(Q, Q_AR, KEEP_AR, higher_is_better=True) == pytest.approx(IEC_AR)
    assert iec_ar(Q, Q_AR, KEEP_AR, higher_is_better=False) == pytest.approx(IEC_AR_LOWER)
    assert math.isnan(iec_ar(Q, Q_AR, KEEP_AR, higher_is_better=None))

    scores = meta_scores(Q, Q_NR, KEEP_NR, Q_AR, KEEP_AR, higher_is_better=True)
    assert (scores.IAC_NR, scores.IEC_NR, scores.IAC_AR, scores.IEC_AR) == pytest.approx(
        (IAC_NR, IEC_NR, IAC_AR, IEC_AR))
    assert scores.mc == pytest.approx((IAC_NR + IEC_NR + IAC_AR + IEC_AR) / 4)
    assert (scores.images_nr, scores.images_ar) == (4.5, 4.5)
    # NR: 0.547 > 0.05 and 0.875 > 0.5 pass; AR: IEC_AR 0.45 is not above 0.5
    assert verdict(scores, Thresholds()) == ("pass", "fail")
    assert verdict(scores, Thresholds(iec_ar=0.4)) == ("pass", "pass")


def test_ties_keep_their_ranks_and_nan_images_are_left_out() -> None:
    q = np.array([[0.5, 0.5, NAN], [0.5, 0.2, 0.1]])
    q_hat = np.array([[[0.5, 0.5, 0.0], [0.5, 0.3, 0.9]]])
    keep = np.ones((1, 3), dtype=bool)
    # image 0 stays tied (stable ranks kept), image 1 keeps its order, image 2 is NaN: U = 1
    assert iec_nr(q, q_hat, keep) == 1.0
    # a tie that breaks the other way: both places change
    assert iec_nr(q[:, :1], np.array([[[0.6], [0.5]]]), keep[:, :1]) == 0.0


def test_no_judged_image_gives_nan_and_n_a() -> None:
    none = np.zeros((2, 5), dtype=bool)
    assert math.isnan(iac(Q, Q_NR, none, reactive=False))
    assert math.isnan(iec_nr(Q, Q_NR, none)) and math.isnan(iec_ar(Q, Q_AR, none, True))
    scores = MetaScores(1.0, 1.0, NAN, NAN, 5.0, 0.0)
    assert verdict(scores, Thresholds()) == ("pass", "n/a") and scores.mc == 1.0


def test_bad_settings_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="iec_nr"):
        Thresholds(iec_nr=1.5)
    with pytest.raises(ConfigError, match="draws"):
        MetaSettings(draws=0)
    with pytest.raises(ConfigError, match="spaces"):
        MetaSettings(spaces=("weights",))
    with pytest.raises(ConfigError, match="model_noise.ar"):
        MetaSettings(model_noise={"nr": 0.001, "ar": 0})
    with pytest.raises(ConfigError, match="ar_images"):
        MetaSettings(ar_images="some")
    with pytest.raises(ConfigError, match="nr_images"):
        MetaSettings(nr_images="changed")
    with pytest.raises(ConfigError, match="model_noise_type"):
        P.perturb_model(nn.Linear(2, 2), 0.1, 0, 0, noise="shift")


def test_settings_from_the_config_and_the_method_alias(compose_cfg) -> None:
    from xai_bench.meta_evaluate import method_alias, settings_of

    cfg = compose_cfg("ckpt=x.ckpt", "meta.draws=2", "meta.pass.iac_ar=0.6",
                      config_name="meta_evaluate")
    settings = settings_of(cfg.meta)
    assert settings.draws == 2 and settings.thresholds.iac_ar == 0.6
    assert len(settings.conditions) == 1 + 2 * 2 * 2
    assert set(cfg.metric) == {"pointing_game", "relevance_mass", "aopc", "max_sensitivity"}
    assert list(cfg.methods) == ["attention", "chefer", "gradcam", "random"]
    cfg = compose_cfg("ckpt=x.ckpt", "+meta.pass.iac=0.5", config_name="meta_evaluate")
    with pytest.raises(ConfigError, match="meta.pass.iac "):
        settings_of(cfg.meta)
    assert method_alias(["prog", "method=[gradcam,random]", "metric=[study]"]) == [
        "prog", "methods=[gradcam,random]", "metric=[study]"]


# --- the perturbations ------------------------------------------------------------------------


def test_model_noise_is_seeded_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    a = P.perturb_model(model, 0.1, seed=3, draw=1, stream=2)
    b = P.perturb_model(model, 0.1, seed=3, draw=1, stream=2)
    c = P.perturb_model(model, 0.1, seed=3, draw=2, stream=2)
    for orig, pa, pb, pc in zip(before, a.parameters(), b.parameters(), c.parameters(),
                                strict=True):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
        ratio = pa / orig  # multiplicative: w * N(1, 0.1^2)
        assert (ratio - 1).abs().max() < 0.6 and (ratio - 1).std() > 0.03
    assert all(torch.equal(x, y) for x, y in zip(before, model.parameters(), strict=True))
    additive = P.perturb_model(model, 0.1, seed=3, draw=1, noise="additive")
    assert (additive[0].weight - model[0].weight).abs().max() < 0.6


def test_input_noise_is_seeded_per_image_id() -> None:
    images = torch.zeros(3, 2, 4, 4)
    ids = torch.tensor([7, 8, 9])
    noisy = P.perturb_images(images, ids, 0.5, seed=1, draw=0, stream=3)
    assert noisy.abs().max() <= 0.5 and noisy.std() > 0.1
    alone = P.perturb_images(images[1:2], ids[1:2], 0.5, seed=1, draw=0, stream=3)
    assert torch.equal(alone[0], noisy[1])  # the same noise whatever the batch
    assert not torch.equal(P.perturb_images(images, ids, 0.5, seed=1, draw=1, stream=3), noisy)


# --- the scoring loop on a tiny model ---------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean(dim=(2, 3)))


def test_scores_of_every_condition_on_a_tiny_model() -> None:
    from xai_bench.explain import build_method
    from xai_bench.metrics import build_metric

    torch.manual_seed(0)
    net = _TinyNet().eval()
    images = torch.randn(6, 3, 8, 8)
    masks = torch.zeros(6, 8, 8)
    masks[:, 2:6, 2:6] = 1
    batches = [{"image": images[:4], "label": torch.tensor([0, 1, 0, 1]),
                "index": torch.arange(4), "mask": masks[:4],
                "has_mask": torch.ones(4, dtype=torch.bool)},
               {"image": images[4:], "label": torch.tensor([0, 1]), "index": torch.arange(4, 6),
                "mask": masks[4:], "has_mask": torch.ones(2, dtype=torch.bool)}]
    methods = {"saliency": build_method("saliency"), "random": build_method("random")}
    factories = {"relevance_mass": lambda key: build_metric("relevance_mass", key=key),
                 "aopc": lambda key: build_metric("aopc", key=key, region=[4])}
    settings = MetaSettings(draws=1)
    table = collect_scores(net, methods, factories, batches, settings)
    assert table.methods == ["saliency", "random"] and table.ids.tolist() == list(range(6))
    assert set(table.columns) == {"relevance_mass", "aopc@4"}
    assert len(table.scores) == 1 + 2 * 2
    clean = next(c for c in table.scores if c.space == "clean")
    assert table.kept[clean].all()
    # aopc scores every image (only_correct is off): no NaN although labels are arbitrary
    assert np.isfinite(table.scores[clean]["aopc@4"]).all()
    for condition, scores in table.scores.items():
        assert scores["relevance_mass"].shape == (2, 6)
        if condition.space == "model":  # the random map ignores the model: same mass
            np.testing.assert_array_equal(scores["relevance_mass"][1],
                                          table.scores[clean]["relevance_mass"][1])
        if condition.kind == "nr":  # 0.001 noise: the predictions and the maps barely move
            assert table.kept[condition].all()
            np.testing.assert_allclose(scores["relevance_mass"],
                                       table.scores[clean]["relevance_mass"], atol=0.02)
    rows = judge(table, settings)
    assert [(r.column, r.space) for r in rows] == [
        ("relevance_mass", "model"), ("relevance_mass", "input"), ("aopc@4", "model"),
        ("aopc@4", "input")]
    assert all(r.nr in ("pass", "fail") and r.verdict in ("pass", "fail", "n/a") for r in rows)


# --- the command line, on a tiny trained run ---------------------------------------------------


@pytest.mark.slow
def test_meta_evaluate_cli_writes_table_plots_and_wandb(run_copy: Path, tmp_path: Path) -> None:
    from xai_bench.tracking.records import MetaEvaluationRecord
    from xai_bench.tracking.wandb_offline import offline_run_dirs, read_offline_run

    out = tmp_path / "meta"
    proc = run_cli(["xai_bench.meta_evaluate", f"ckpt={run_copy}", "method=[gradcam,random]",
                    "metric=[meta_evaluation]", "metric.aopc.region=[16]",
                    "metric.max_sensitivity.samples=[1]", "max_images=4", "meta.draws=1",
                    f"hydra.run.dir={out}", "print_config=false"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = list(csv.DictReader((out / "meta_evaluation.csv").open()))
    columns = ["pointing_game", "relevance_mass", "aopc@16", "max_sensitivity@0.1"]
    assert [(r["column"], r["space"]) for r in rows] == [
        (c, s) for c in columns for s in ("model", "input")]
    assert {"IAC_NR", "IEC_NR", "IAC_AR", "IEC_AR", "MC", "NR", "AR", "verdict"} <= set(rows[0])
    assert all(r["NR"] in ("pass", "fail", "n/a") for r in rows)
    for row in rows:
        for key in ("IAC_NR", "IEC_NR"):
            assert 0.0 <= float(row[key]) <= 1.0
    for key in ("pointing_game", "relevance_mass", "aopc", "max_sensitivity"):
        assert (out / "plots" / f"{key}.png").stat().st_size > 5000
    summary = MetaEvaluationRecord.read(out)
    assert summary.methods == ["gradcam", "random"] and summary.images == 4
    assert list(summary.verdicts()) == columns and summary.training_run == str(run_copy.resolve())
    assert summary.trusted == sorted(c for c, v in summary.verdicts().items() if v == "pass")
    scores = list(csv.DictReader((out / "scores.csv").open()))
    assert len(scores) == (1 + 2 * 2) * 2 * 4
    assert (out / "config.yaml").is_file()
    run = read_offline_run(offline_run_dirs(out)[0])
    assert run.job_type == "meta_eval"
    assert run.metric("meta/pointing_game/model/IAC_NR")[-1] == pytest.approx(
        float(rows[0]["IAC_NR"]), abs=1e-4)

    proc = run_cli(["xai_bench.meta_evaluate", f"ckpt={run_copy}", "method=[gradcam,nope]",
                    "logger=none", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path,
                   timeout=300)
    fails_cleanly(proc, "nope", "conf/method/")
