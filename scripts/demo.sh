#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic dataset, a few minutes on a CPU:
#   1. train a tiny ViT (W&B offline)
#   2. evaluate attention, Chefer and Grad-CAM beside the random / centre / uniform baselines
#      (localisation and parameter-randomisation metrics)
#   3. write the report (tables, plots, overlay galleries) and say where to open it
# Everything lands in one folder, outputs/demo/<date_time>/ (or $DEMO_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIR=${DEMO_DIR:-outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)}
METHODS=${DEMO_METHODS:-attention,chefer,gradcam}

echo "== 1/3 train -> $DIR/train"
"$PY" -m xai_bench.train hydra.run.dir="$DIR/train" print_config=false
echo "== 2/3 evaluate $METHODS -> $DIR/evaluate"
"$PY" -m xai_bench.evaluate -m ckpt="$DIR/train" method="$METHODS" hydra.sweep.dir="$DIR/evaluate" \
    print_config=false
echo "== 3/3 report -> $DIR/evaluate/report"
"$PY" -m xai_bench.report sweep="$DIR/evaluate" print_config=false
echo "demo done: training run $DIR/train, evaluation runs $DIR/evaluate/*," \
    "report $DIR/evaluate/report/index.html"
