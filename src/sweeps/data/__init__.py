from sweeps.data.datasets import Split, Splits, load_splits

__all__ = ["Split", "Splits", "load_splits"]
