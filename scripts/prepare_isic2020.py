"""SIIM-ISIC 2020 (Kaggle or ISIC archive) -> data/isic2020: `python scripts/prepare_isic2020.py --raw siim-isic-melanoma-classification --out data/isic2020`
(see xai_bench/data/prepare/isic2020.py for the layout)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.isic2020 import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
