"""Batched metric functions: per-image scores from maps, masks, models (no state, no DDP)."""
