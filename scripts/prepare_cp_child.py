"""CP-CHILD -> data/cp_child: `python scripts/prepare_cp_child.py --raw CP-CHILD --out data/cp_child`
attaches the reference study's ROI masks, shipped with xai_bench (`--rois study`, the default;
or `--rois <folder>` | `none`); see xai_bench/data/prepare/cp_child.py for the layout."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.cp_child import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
