"""The Hydra plugin class; the work is done in :mod:`sweeps_optuna.sweeper`."""

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


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
