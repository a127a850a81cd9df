"""Small shared helpers: errors, git revision, task wrapper, instantiation."""

from xai_bench.utils.errors import (
    ConfigError,
    DatasetNotFoundError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    XaiBenchError,
)

__all__ = [
    "ConfigError",
    "DatasetNotFoundError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "XaiBenchError",
]
