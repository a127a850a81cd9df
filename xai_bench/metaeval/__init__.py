"""Meta-evaluation of the metrics (Hedström et al., 2023, "The meta-evaluation problem in
explainable AI"): which metrics can be trusted on this model? Each metric's noise resilience
(its scores of the methods stay put when the model or the inputs are perturbed a little) and
adversarial reactivity (they move when the perturbation is disruptive), as MetaQuantus'
intra- and inter-consistency scores. `python -m xai_bench.meta_evaluate` runs it
(docs/meta-evaluation.md).
"""

from xai_bench.metaeval.perturbations import Condition, conditions, perturb_images, perturb_model
from xai_bench.metaeval.run import MetaRow, MetaSettings, ScoreTable, collect_scores, judge
from xai_bench.metaeval.scores import MetaScores, Thresholds, iac, iec_ar, iec_nr, meta_scores

__all__ = [
    "Condition",
    "MetaRow",
    "MetaScores",
    "MetaSettings",
    "ScoreTable",
    "Thresholds",
    "collect_scores",
    "conditions",
    "iac",
    "iec_ar",
    "iec_nr",
    "judge",
    "meta_scores",
    "perturb_images",
    "perturb_model",
]
