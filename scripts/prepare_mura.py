"""MURA v1.1 -> data/mura: `python scripts/prepare_mura.py --raw MURA-v1.1 --out data/mura`
attaches the reference study's ROI masks, shipped with xai_bench (`--rois study`, the default;
or `--rois <folder>` | `none`); see xai_bench/data/prepare/mura.py for the layout."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.mura import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
