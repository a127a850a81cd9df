"""NCT-CRC-HE-100K + CRC-VAL-HE-7K -> data/crc: `python scripts/prepare_crc.py --raw <folder with both>
--out data/crc` (see xai_bench/data/prepare/crc.py for the layout)."""

from xai_bench.data.prepare.common import run_prepare
from xai_bench.data.prepare.crc import main

if __name__ == "__main__":
    raise SystemExit(run_prepare(main))
