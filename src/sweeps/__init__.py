"""sweeps: Hydra + Optuna + MLflow ablations for small image classifiers."""

__version__ = "0.1.0"
