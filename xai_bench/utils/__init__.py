"""Small shared helpers: errors, git revision, task wrapper, instantiation."""

from xai_bench.utils.errors import (
    ConfigError,
    DatasetNotFoundError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    XaiBenchError,
)
from xai_bench.utils.resolvers import register_resolvers  # noqa: F401  (the configs' ${xai.*} and ${run:*})

__all__ = [
    "ConfigError",
    "DatasetNotFoundError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "XaiBenchError",
]
