"""Structured configs: ``hydra/sweeper=sweeps_optuna`` and its sampler and pruner groups.

The sweeper accepts the stock ``hydra/sweeper=optuna`` settings unchanged
(``sampler``, ``direction``, ``storage``, ``study_name``, ``n_trials``,
``n_jobs``, ``max_failure_rate``, ``search_space``, ``params``,
``custom_search_space``) and adds ``pruner``, ``heartbeat_interval``, the
study-sharing settings and ``hooks`` (the app's side of a sweep: the group
``hydra/sweeper/hooks``, whose option ``app`` an app provides in its own
config tree; see :mod:`sweeps_optuna.hooks`).

When the stock plugin is not installed, the same configs are also stored as
``hydra/sweeper=optuna``, so that existing configs (``override
/hydra/sweeper: optuna``) select ours unchanged; when it is installed, ``optuna``
is the stock plugin and ours is ``sweeps_optuna`` only.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sweeps_optuna import stock

PROVIDER = "sweeps"


class DistributionType(Enum):
    int = 1
    float = 2
    categorical = 3


class Direction(Enum):
    minimize = 1
    maximize = 2


@dataclass
class SamplerConfig:
    """Keys left null are not passed: the sampler's own default applies."""

    _target_: str = MISSING
    seed: Optional[int] = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    # Stock keys deprecated by Optuna 4.3-4.9: accepted; null (not passed) by default.
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    warn_independent_sampling: Optional[bool] = None
    constant_liar: bool = False


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    independent_sampler: Optional[Any] = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Optional[Any] = None
    popsize: Optional[int] = None
    inc_popsize: int = -1
    use_separable_cma: bool = False
    source_trials: Optional[Any] = None


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Optional[Any] = None


@dataclass
class MOTPESamplerConfig(SamplerConfig):
    """The stock option ``motpe``: MOTPESampler was removed in Optuna 4 (TPESampler handles several
    objectives). Kept so that selecting it gets that sentence instead of "could not find"."""

    _target_: str = "optuna.samplers.MOTPESampler"
    consider_prior: Optional[bool] = None
    prior_weight: Optional[float] = None
    consider_magic_clip: Optional[bool] = None
    consider_endpoints: Optional[bool] = None
    n_startup_trials: Optional[int] = None
    n_ehvi_candidates: Optional[int] = None


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The search space comes from ``params``; ``search_space`` here is left null."""

    _target_: str = "optuna.samplers.GridSampler"
    search_space: Optional[Dict[str, Any]] = None


@dataclass
class QMCSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = False
    independent_sampler: Optional[Any] = None
    warn_asynchronous_seeding: bool = True
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GPSampler"
    independent_sampler: Optional[Any] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConfig(PrunerConfig):
    """Stops a trial whose reported value leaves [lower, upper], e.g. lower=0.2 drops trials
    still near chance after n_warmup_steps epochs."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class DistributionConfig:
    """Deprecated ``search_space`` entries (stock plugin compatibility)."""

    type: DistributionType
    choices: Optional[List[Any]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None


# _self_ first: the app's hooks option, when there is one, replaces the null below.
defaults = ["_self_", {"sampler": "tpe"}, {"pruner": "none"}, {"optional hooks": "app"}]


@dataclass
class SweepsOptunaSweeperConf:
    _target_: str = "hydra_plugins.sweeps_optuna_sweeper.optuna_sweeper.SweepsOptunaSweeper"
    # The sweeper builds sampler and pruner itself (it adds the grid and the
    # parameter-budget constraint to the sampler).
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: defaults)

    # https://optuna.readthedocs.io/en/stable/reference/samplers/index.html
    sampler: Any = MISSING
    # minimize / maximize, or a list of them for a multi-objective study.
    # null: follow the task's ``objective`` (maximize accuracies, minimize losses and
    # parameter counts), or minimize as the stock plugin does when there is none.
    direction: Any = None
    # null: SQLite at <original cwd>/multirun/optuna.db. Any RDB URL (e.g.
    # postgresql://user:password@host/db), or journal:///abs/path/file.log for
    # Optuna's journal file storage on a shared file system. By default it is read
    # from the environment variable SWEEPS_OPTUNA_STORAGE, so that a URL with a
    # password never sits in a config file or on the command line.
    storage: Optional[Any] = "${oc.env:SWEEPS_OPTUNA_STORAGE,null}"
    # null: the hparams_search config name, else the task name.
    study_name: Optional[str] = None
    # Total trials of the study (COMPLETE + PRUNED + FAIL, interrupted ones excluded).
    n_trials: int = 20
    # Worker processes pulling from the study (1: this process only).
    n_jobs: int = 2
    # Fraction of n_trials allowed to FAIL before the sweep stops (non-zero exit).
    max_failure_rate: float = 0.0
    search_space: Optional[Dict[str, Any]] = None
    params: Optional[Dict[str, str]] = None
    # Dotted path to fn(cfg, trial) adding suggestions of its own.
    custom_search_space: Optional[str] = None
    # https://optuna.readthedocs.io/en/stable/reference/pruners.html
    # (group hydra/sweeper/pruner: none, nop, median, successive_halving, hyperband; or a _target_ node)
    pruner: Any = MISSING
    # Seconds between liveness stamps of a running trial; a RUNNING trial whose
    # last stamp is older than 4 intervals (or whose local process is gone) is
    # treated as interrupted. null: process check only (same host).
    heartbeat_interval: Optional[int] = 60
    # A study is resumed only by the sweep that made it: the same search space and
    # the same fixed overrides (except those in ``study_ignores``). true: continue
    # it anyway with what this command changed (a wider space, more epochs, ...).
    allow_study_changes: bool = False
    # Overrides that may differ between the sweeps sharing a study (prefixes); the
    # app's hooks add theirs (where it records, how fast it trains).
    study_ignores: List[str] = field(default_factory=lambda: ["hydra"])
    # The app's side of a sweep (parameter budget, run records): a _target_ node
    # naming a hooks.SweepHooks subclass, from the group hydra/sweeper/hooks.
    # null: a plain Hydra app.
    hooks: Optional[Any] = None


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="sweeps_optuna", node=SweepsOptunaSweeperConf, provider=PROVIDER)
if not stock.installed():
    cs.store(group="hydra/sweeper", name=stock.OPTION, node=SweepsOptunaSweeperConf, provider=PROVIDER)
for name, node in {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
    "motpe": MOTPESamplerConfig,
    "grid": GridSamplerConfig,
    "qmc": QMCSamplerConfig,
    "gp": GPSamplerConfig,
}.items():
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider=PROVIDER)
for name, node in {
    "none": NopPrunerConfig,
    "nop": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "threshold": ThresholdPrunerConfig,
}.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider=PROVIDER)
