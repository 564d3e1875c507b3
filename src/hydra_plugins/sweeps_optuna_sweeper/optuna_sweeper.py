"""The Hydra plugin class; the work is done in :mod:`._impl`."""

from typing import Any, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import Direction


class SweepsOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any = Direction.minimize,
        storage: Optional[Any] = None,
        study_name: Optional[str] = None,
        n_trials: int = 20,
        n_jobs: int = 2,
        max_failure_rate: float = 0.0,
        search_space: Optional[DictConfig] = None,
        params: Optional[DictConfig] = None,
        custom_search_space: Optional[str] = None,
        pruner: Any = None,
        heartbeat_interval: Optional[int] = 60,
        allow_study_changes: bool = False,
        study_ignores: Optional[List[str]] = None,
    ) -> None:
        from ._impl import SweepsOptunaSweeperImpl

        self.sweeper = SweepsOptunaSweeperImpl(
            sampler=sampler,
            direction=direction,
            storage=storage,
            study_name=study_name,
            n_trials=n_trials,
            n_jobs=n_jobs,
            max_failure_rate=max_failure_rate,
            search_space=search_space,
            params=params,
            custom_search_space=custom_search_space,
            pruner=pruner,
            heartbeat_interval=heartbeat_interval,
            allow_study_changes=allow_study_changes,
            study_ignores=study_ignores or (),
        )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)
