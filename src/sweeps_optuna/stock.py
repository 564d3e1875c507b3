"""The stock hydra-optuna-sweeper, as far as a drop-in replacement needs to know it.

Without the stock plugin, ours answers to its option name (``hydra/sweeper=optuna``)
and its class name (a config that pins ``hydra.sweeper._target_`` to it); with
it installed, those are the stock plugin's and ours is ``sweeps_optuna`` only.
"""

from __future__ import annotations

import importlib.machinery

PACKAGE = "hydra_plugins.hydra_optuna_sweeper"
MODULE, CLASS = f"{PACKAGE}.optuna_sweeper", "OptunaSweeper"
TARGET = f"{MODULE}.{CLASS}"
OPTION = "optuna"


def installed() -> bool:
    """Whether the stock plugin's files are installed (ours may answer to its name: see
    ``hydra_plugins.sweeps_optuna_sweeper.optuna_sweeper``; that does not count)."""
    try:
        import hydra_plugins
    except ImportError:
        return False
    return importlib.machinery.PathFinder.find_spec(PACKAGE, list(hydra_plugins.__path__)) is not None
