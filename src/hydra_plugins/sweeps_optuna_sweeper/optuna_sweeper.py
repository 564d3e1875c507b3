"""The Hydra plugin class; the work is done in :mod:`sweeps_optuna.sweeper`.

Without the stock plugin installed, ours also answers to the stock class name
``hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper``, which configs
written for it pin (lightning-hydra-template's ``hparams_search`` configs do):
Hydra looks a plugin up by that name among the classes it scanned, then imports
it by name. A finder placed after every other one on ``sys.meta_path`` serves
that module only when no installed package does, so the stock plugin, when
present, always wins.
"""

import importlib.abc
import importlib.util
import sys
import types
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from sweeps_optuna import stock


class SweepsOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # The settings are the keys of config.SweepsOptunaSweeperConf; the implementation's
        # signature names each of them, and is imported only when a sweep is made.
        from sweeps_optuna.sweeper import SweepsOptunaSweeperImpl

        self.sweeper = SweepsOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)


class _StockNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the stock plugin's package and module names, holding ours under the stock class name."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name in (stock.PACKAGE, stock.MODULE):
            return importlib.util.spec_from_loader(name, self, is_package=name == stock.PACKAGE)
        return None

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == stock.MODULE:
            setattr(module, stock.CLASS, StockNamedOptunaSweeper)


if not stock.installed():
    class StockNamedOptunaSweeper(SweepsOptunaSweeper):
        """Ours, registered by Hydra's plugin scan under the stock class name."""

    StockNamedOptunaSweeper.__module__, StockNamedOptunaSweeper.__name__ = stock.MODULE, stock.CLASS
    StockNamedOptunaSweeper.__qualname__ = stock.CLASS
    # Hydra's scan executes this module again in place: one finder, serving the newest class.
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != _StockNameFinder.__name__]
    sys.meta_path.append(_StockNameFinder())
    for name in (stock.MODULE, stock.PACKAGE):
        sys.modules.pop(name, None)
