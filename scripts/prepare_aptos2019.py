"""APTOS 2019 (Kaggle) -> data/aptos2019: `python scripts/prepare_aptos2019.py --raw aptos2019-blindness-detection --out data/aptos2019`
(see xai_bench/data/prepare/aptos2019.py for the layout)."""

from xai_bench.data.prepare.aptos2019 import main
from xai_bench.data.prepare.common import run_prepare

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
