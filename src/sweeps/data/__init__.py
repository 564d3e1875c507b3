from sweeps.data.datasets import load_splits
from sweeps.data.splits import Split, Splits

__all__ = ["Split", "Splits", "load_splits"]
