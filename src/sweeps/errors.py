"""Every error sweeps reports to its user, in one place.

A user who mistypes an override should read one paragraph that names the bad
value and the fix, not a stack trace. Each class here is a
:class:`~sweeps_optuna.contract.UserError`, so a sweep
records a trial that ends with one under that same sentence, and every
entrypoint prints it as ``error: <paragraph>`` (see :mod:`sweeps.cli`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sweeps_optuna.contract import Infeasible, MachineFault, UserError


class ConfigError(UserError, ValueError):
    """A bad value in the composed config (or on the command line): exit status 2."""


class BudgetExceeded(Infeasible, ConfigError):
    """The model has more parameters than ``budget.max_params`` allows."""

    def __init__(self, n_params: int, max_params: int, what: str = "the model"):
        self.what = what
        super().__init__(
            n_params, max_params,
            f"{what} has {n_params:,} parameters, over the budget of "
            f"budget.max_params={max_params:,}; nothing was trained. Shrink the model "
            "(fewer model.blocks, narrower model.channels, a smaller model.head) or lift "
            f"the budget with budget.max_params={n_params} (or budget.max_params=null to "
            "disable it).")

    def __reduce__(self):
        # Pickled back from a submitit job to the sweeper: rebuild from the numbers, not the message.
        return (type(self), (self.n_params, self.max_params, self.what))


class DataUnavailable(ConfigError):
    """A dataset is neither on disk nor downloadable."""


class DiskUnusable(ConfigError):
    """A directory the run writes to cannot be created or written, or its disk is (nearly) full."""


class DiskFull(MachineFault):
    """The disk filled up while a run was writing (checkpoint, MLflow store, study): the run
    stops with one paragraph; its records are closed where the disk allows, and in a sweep
    its trial runs again once there is space."""


class ReportError(ConfigError):
    """A report target (sweep dir, experiment, store) that cannot be read as asked."""


class Diverged(UserError, RuntimeError):
    """The training loss became NaN or infinite: the trial fails, the sweep goes on."""


class OutOfMemory(UserError, RuntimeError):
    """The model and batch did not fit on the device: the trial fails, the next trial gets the
    memory back. Not a typo in the command, so a single run exits 1, not 2."""

    exit_code = 1


def close_matches(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix, or '' when nothing is close."""
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean '{by_lower[found[0]]}'?" if found else ""
