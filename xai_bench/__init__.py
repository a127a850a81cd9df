"""xai_bench: experiment sweeps for interpretability studies of medical image classifiers."""

__version__ = "0.1.0"
