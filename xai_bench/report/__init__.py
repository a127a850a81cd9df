"""What an evaluation leaves behind for people: overlay figures and result tables."""

from xai_bench.report.overlays import denormalize, save_overlay
from xai_bench.report.tables import flat_scalars, per_image_rows, summarise, write_per_image_csv

__all__ = ["denormalize", "flat_scalars", "per_image_rows", "save_overlay", "summarise",
           "write_per_image_csv"]
