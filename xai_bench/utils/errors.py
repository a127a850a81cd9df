"""Errors a user can act on: each carries one message saying what is wrong and how to fix it."""


class XaiBenchError(RuntimeError):
    """Base class: the entry points print these without a traceback."""


class ConfigError(XaiBenchError, ValueError):
    """A config value is invalid."""


class DatasetNotFoundError(XaiBenchError, FileNotFoundError):
    """A dataset root is missing or not in the canonical layout."""


class WeightsNotFoundError(XaiBenchError, FileNotFoundError):
    """A pretrained weights file is missing and the hub cannot be used."""


class UnsafeCheckpointError(XaiBenchError):
    """A checkpoint or weights file holds arbitrary pickled objects and was refused."""
