"""PASCAL VOC 2012 -> data/pascal_voc: `python scripts/prepare_pascal_voc.py --raw VOCdevkit/VOC2012
--out data/pascal_voc` (see xai_bench/data/prepare/pascal_voc.py for the layout)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.pascal_voc import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
