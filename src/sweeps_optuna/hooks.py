"""How a Hydra app plugs into the sweeper, without the sweeper importing the app.

The sweeper knows Optuna and Hydra; what a trial *means* (a model with a
parameter count, a run in a tracker) belongs to the app. An app subclasses
:class:`SweepHooks` and names it in its config tree as the option ``app`` of
the group ``hydra/sweeper/hooks``, e.g. ``conf/hydra/sweeper/hooks/app.yaml``::

    _target_: sweeps.sweep_hooks.SweepsHooks

The sweeper's config picks that option when it exists (it is optional), so any
sweep of the app uses it and any other Hydra app gets these do-nothing
defaults; ``~hydra/sweeper/hooks`` on the command line turns it off.

Every method may be called from any process of a sweep (the sweep process, its
workers, a second sweep on another host); they share state only through the
study (see :mod:`.contract`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial

from .contract import INTERRUPTED_STATE


@dataclass(frozen=True)
class TrialLink:
    """What a job needs to find its trial again: study, a storage reference without a
    password in it (see ``storage.STORAGE_ENV``), trial number, the sweep's parent run."""

    study_name: str
    storage: str
    number: int
    parent_run_id: Optional[str]
    # The trial's short name (search_space.trial_name), for its run; "" before it is sampled.
    run_name: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a trial's job ended, as its run record holds it."""

    state: str  # contract.COMPLETE, PRUNED or FAIL
    values: Optional[List[float]] = None  # the objective(s), for COMPLETE
    reason: str = ""


class SweepHooks:
    """The app's side of a sweep; each default does nothing (a plain Hydra app)."""

    # True: the sweeper composes each trial's config before launch and asks count_params
    # and max_params, so that a model over budget is never launched.
    counts_params = False

    def bind(self, config: DictConfig) -> None:
        """The sweep's composed config (``hydra`` node included), before anything else."""
        self.config = config

    # ---- what the objective is

    def directions(self) -> Optional[List[str]]:
        """``minimize``/``maximize`` per objective when ``hydra.sweeper.direction`` is null;
        None: minimize, as the stock plugin does."""
        return None

    def ignored_overrides(self) -> Sequence[str]:
        """Override prefixes that do not change the experiment (paths, logging, devices):
        a study may be resumed with other values of them."""
        return ()

    # ---- the parameter budget

    def max_params(self, cfg: DictConfig) -> Optional[int]:
        """The parameter budget of a composed config (the sweep's, or a trial's); None: none."""
        return None

    def count_params(self, cfg: DictConfig) -> int:
        """The parameter count of a trial's composed config, without training it."""
        raise NotImplementedError

    # ---- the trial's records

    def open_sweep(self, study: optuna.Study, created: bool) -> Optional[str]:
        """Open (or find) the sweep's parent run; its id, shared through the study."""
        return None

    def job_overrides(self, link: TrialLink) -> Dict[str, Any]:
        """{key: value} overrides that tell a trial's job which trial it is (for pruning and
        its records); the sweeper writes them in Hydra's syntax."""
        return {}

    def record_refused(self, link: TrialLink, cfg: Optional[DictConfig], state: str, reason: str,
                       run_name: str, n_params: Optional[int]) -> Optional[str]:
        """Record a trial that was never launched (INFEASIBLE, or a FAIL before its job ran);
        ``cfg`` is None when the trial's config could not be composed; ``run_name``: its
        overrides, ``link.run_name``: its short name. The run's id, or None."""
        return None

    def has_record(self, link: TrialLink, trial: FrozenTrial) -> bool:
        """Whether the trial's job opened its own run record."""
        return True

    def outcome(self, link: TrialLink, trial: FrozenTrial) -> Optional[Outcome]:
        """How the job of a trial left RUNNING by a dead process ended, if it did (its run
        FINISHED or FAILED); None: it did not finish, so the trial runs again."""
        return None

    def close_orphan(self, link: TrialLink, trial: FrozenTrial, reason: str, state: str = INTERRUPTED_STATE) -> None:
        """End the trial's run records that are still open with ``state``: INTERRUPTED for a trial
        whose process died mid-job, FAIL for a job that failed without closing its own."""

    def close_sweep(self, results: dict) -> None:
        """The study reached ``n_trials``: close the parent run with the results."""


def load_hooks(spec: Any, config: DictConfig) -> SweepHooks:
    """The hooks named by ``hydra.sweeper.hooks`` (a ``_target_`` node), bound to ``config``."""
    from hydra.utils import instantiate

    hooks = SweepHooks() if not spec else (spec if isinstance(spec, SweepHooks) else instantiate(spec))
    if not isinstance(hooks, SweepHooks):
        raise TypeError(f"hydra.sweeper.hooks built a {type(hooks).__name__}, not a SweepHooks subclass")
    hooks.bind(config)
    return hooks
