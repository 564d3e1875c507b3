"""User-facing errors.

A user who mistypes an override should read one paragraph that names the bad
value and the fix, not a stack trace; everything that is the user's fault is
raised as :class:`ConfigError` and printed that way by the entrypoints.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad value in the composed config (or on the command line)."""


class BudgetExceeded(ConfigError):
    """The model has more parameters than ``budget.max_params`` allows."""

    def __init__(self, n_params: int, max_params: int, what: str = "the model"):
        self.n_params = n_params
        self.max_params = max_params
        self.what = what
        super().__init__(
            f"{what} has {n_params:,} parameters, over the budget of "
            f"budget.max_params={max_params:,}; nothing was trained. Shrink the model "
            "(fewer model.blocks, narrower model.channels, a smaller model.head) or lift "
            f"the budget with budget.max_params={n_params} (or budget.max_params=null to "
            "disable it)."
        )

    def __reduce__(self):
        # Pickled back from a submitit job to the sweeper: rebuild from the numbers, not the message.
        return (type(self), (self.n_params, self.max_params, self.what))


class DataUnavailable(ConfigError):
    """A dataset is neither on disk nor downloadable."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix, or '' when nothing is close."""
    by_lower = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean '{by_lower[found[0]]}'?" if found else ""
