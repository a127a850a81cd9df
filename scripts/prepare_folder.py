"""Your own images -> data/folder: `python scripts/prepare_folder.py --raw my_images --out data/folder
[--csv labels.csv] [--masks masks/] [--boxes boxes.csv]` (see xai_bench/data/prepare/folder.py)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.folder import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
