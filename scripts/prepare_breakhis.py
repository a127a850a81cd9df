"""BreaKHis v1 -> data/breakhis: `python scripts/prepare_breakhis.py --raw BreaKHis_v1 --out data/breakhis`
(see xai_bench/data/prepare/breakhis.py for the layout)."""

from xai_bench.data.prepare.breakhis import main
from xai_bench.data.prepare.common import run_prepare

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
