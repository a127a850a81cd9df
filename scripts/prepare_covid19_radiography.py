"""COVID-19 Radiography Database -> data/covid19_radiography: `python scripts/prepare_covid19_radiography.py
--raw COVID-19_Radiography_Dataset --out data/covid19_radiography` (layout: xai_bench/data/prepare/covid19_radiography.py)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.covid19_radiography import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
