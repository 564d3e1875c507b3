"""Whether a finite search space holds any point under the app's parameter budget.

A grid of models that are all over budget would refuse every trial one by one;
checking before the study exists refuses the whole sweep at once and leaves
no empty study behind. Continuous spaces and very large grids are not
enumerated: there each trial's own pre-launch count decides.
"""

from __future__ import annotations

import logging
import math
from itertools import product
from typing import Callable, Dict, List, Optional, Tuple

from omegaconf import DictConfig
from optuna.distributions import BaseDistribution

from .contract import UserError
from .hooks import SweepHooks
from .search_space import format_value, grid_values

log = logging.getLogger(__name__)

MAX_POINTS = 2000


def check_feasible(dists: Dict[str, BaseDistribution], fixed: Dict[str, str], limit: int, hooks: SweepHooks,
                   compose: Callable[[List[str]], DictConfig]) -> None:
    """Raise UserError when no point of a finite space fits ``limit`` (see the module docstring)."""
    values = {name: grid_values(d) for name, d in dists.items()}
    if any(v is None for v in values.values()):
        return  # a continuous space: some point may always fit
    names = list(values)
    size = math.prod(len(v) for v in values.values()) if names else 1
    if size > MAX_POINTS:
        log.info(f"search space of {size} points: skipping the budget pre-check")
        return
    smallest: Optional[Tuple[int, List[str]]] = None
    errors = 0
    for combo in product(*(values[n] for n in names)):
        overrides = [f"{n}={format_value(v)}" for n, v in zip(names, combo)] + [f"{k}={v}" for k, v in fixed.items()]
        try:
            cfg = compose(overrides)
            n_params, cap = hooks.count_params(cfg), hooks.max_params(cfg)
        except Exception:  # noqa: BLE001 - a point that does not build is that trial's failure
            errors += 1
            continue
        if cap is None or n_params <= cap:
            return
        if smallest is None or n_params < smallest[0]:
            smallest = (n_params, overrides)
    if smallest is None:
        detail = f"none of its {size} points even builds a model"
    else:
        detail = (f"the smallest model has {smallest[0]:,} parameters ({' '.join(smallest[1])})"
                  + (f", and {errors} point(s) do not build" if errors else ""))
    raise UserError(f"No point of the search space fits the parameter budget budget.max_params={limit:,}: {detail}. "
                    "Nothing was launched. Shrink the searched models (fewer blocks, narrower channels, a smaller "
                    "head) or lift the budget (budget.max_params=...), then re-run.")
