"""Kvasir v2 -> data/kvasir: `python scripts/prepare_kvasir.py --raw kvasir-dataset-v2 --out data/kvasir`
attaches the reference study's ROI masks, shipped with xai_bench (`--rois study`, the default;
or `--rois <folder>` | `none`); see xai_bench/data/prepare/kvasir.py for the layout."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.kvasir import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
