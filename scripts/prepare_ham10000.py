"""HAM10000 (Dataverse doi:10.7910/DVN/DBW86T) -> data/ham10000: `python scripts/prepare_ham10000.py --raw dataverse_files --out data/ham10000`
(see xai_bench/data/prepare/ham10000.py for the layout)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.ham10000 import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
