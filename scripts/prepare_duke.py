"""Duke-Breast-Cancer-MRI -> data/duke: `python scripts/prepare_duke.py --raw manifest-<id> --out data/duke`
attaches the reference study's ROI masks, shipped with xai_bench (`--rois study`, the default;
or `--rois <folder>` | `none`); see xai_bench/data/prepare/duke.py for the layout and options."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.duke import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
