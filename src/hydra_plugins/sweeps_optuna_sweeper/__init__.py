"""Hydra sweeper ``hydra/sweeper=sweeps_optuna``: Optuna studies with resume, budget and pruning.

A shim for Hydra's plugin discovery; the sweeper itself is the library
:mod:`sweeps_optuna` (see :mod:`sweeps_optuna.sweeper` for its behaviour and
:mod:`sweeps_optuna.contract` for the trial counting rule).
"""
