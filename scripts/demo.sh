#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic dataset, a few minutes on a CPU:
#   1. train a tiny ViT (W&B offline)
#   2. evaluate attention, Chefer and Grad-CAM beside the random / centre / uniform baselines
#      (localisation and parameter-randomisation metrics), in one job (DEMO_METHODS=a,b,...)
#   3. meta-evaluate the metrics on that model (which can be trusted? ~2 min; DEMO_META=0 skips)
#   4. write the report (tables, plots, overlay galleries, the trust section) and say where to
#      open it
# Everything lands in one folder, outputs/demo/<date_time>/ (or $DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIR=${DEMO_DIR:-outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)}
METHODS=${DEMO_METHODS:-attention,chefer,gradcam}

echo "== 1/4 train -> $DIR/train"
"$PY" -m xai_bench.train hydra.run.dir="$DIR/train" print_config=false
echo "== 2/4 evaluate $METHODS (one job) -> $DIR/evaluate/methods"
"$PY" -m xai_bench.evaluate ckpt="$DIR/train" method="[$METHODS]" \
    hydra.run.dir="$DIR/evaluate/methods" print_config=false
if [ "${DEMO_META:-1}" != 0 ]; then
    # inside the evaluation folder, so the report finds it
    echo "== 3/4 meta-evaluate the metrics -> $DIR/evaluate/meta_evaluation"
    "$PY" -m xai_bench.meta_evaluate ckpt="$DIR/train" hydra.run.dir="$DIR/evaluate/meta_evaluation" \
        print_config=false
fi
echo "== 4/4 report -> $DIR/evaluate/report"
"$PY" -m xai_bench.report sweep="$DIR/evaluate" print_config=false
echo "demo done: training run $DIR/train, evaluation run $DIR/evaluate/methods," \
    "report $DIR/evaluate/report/index.html"
