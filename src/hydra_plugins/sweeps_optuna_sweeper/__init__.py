"""Hydra sweeper ``hydra/sweeper=sweeps_optuna``: Optuna 5 studies with resume, budget and pruning.

See :mod:`hydra_plugins.sweeps_optuna_sweeper._impl` for the behaviour and the
trial counting rule.
"""

__version__ = "0.1.0"
