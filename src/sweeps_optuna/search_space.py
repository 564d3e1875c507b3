"""Hydra sweep overrides (``choice``, ``range``, ``interval``, ``tag``) as Optuna distributions.

The same syntax and meaning as the stock hydra-optuna-sweeper, read from
``hydra.sweeper.params`` and the command line (the command line wins), plus the
stock plugin's deprecated ``search_space`` mapping, with the stock warnings. A
parameter that holds fewer than two values is refused here, with the override
named, before any study exists.

``range(start, stop[, step])`` means what it means to the stock plugin: for
Optuna's samplers an int (or stepped float) distribution from ``start`` to
``stop`` *inclusive*, so a migrated config searches the same space; for the grid
sampler the values Hydra's ``range`` lists (``stop`` excluded, as the stock grid).
The stock names of the functions (``create_params_from_overrides`` ...) are
kept as aliases: code and tests written for the stock plugin call them.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

_NO_VALUE = ("lists no value: range(start, stop[, step]) needs start < stop for a positive step (start > stop "
             "for a negative one)")
_MIGRATION_URL = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


def _num(x: Any) -> str:
    """A bound as the user wrote it: 2 for 2.0, 0.001 for 0.001."""
    return str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() else repr(x)


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the fixed value's string.

    ``tag(int, interval(a, b))`` searches the integers a..b (Hydra parses
    interval bounds as floats, so a bare interval is always a float distribution).
    Raises ValueError naming the override for an inverted or empty interval and a
    ``range(...)`` that lists no value.
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    line, key = override.input_line, override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise ValueError(f"{line} {_NO_VALUE}")
        for x in choices:
            if not isinstance(x, (str, int, float, bool, type(None))):
                raise ValueError(f"{line}: a choice must be str, int, float, bool or null; got {x!r}")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        # As the stock plugin: stop is the distribution's (inclusive) high.
        value = override.value()
        if not list(override.sweep_iterator()):
            raise ValueError(f"{line} {_NO_VALUE}")
        low, high = sorted((value.start, value.stop))
        if low == high:
            raise ValueError(f"{line} holds the one value {_num(low)}: nothing to search; fix it with "
                             f"{key}={_num(low)}")
        step = abs(value.step)
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(low), float(high), step=float(step))
        return IntDistribution(int(low), int(high), step=int(step))
    if override.is_interval_sweep():
        return _interval(override, line, key)
    raise NotImplementedError(f"{line} is not supported by the sweeps_optuna sweeper")


def _interval(override: Override, line: str, key: str) -> BaseDistribution:
    value = override.value()
    is_log = "log" in value.tags
    low, high = value.start, value.end
    is_int = "int" in value.tags or (isinstance(low, int) and isinstance(high, int))
    if is_int:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ValueError(f"{line}: tag(int, interval(low, high)) needs whole-number bounds, got "
                             f"low={_num(low)}, high={_num(high)}")
        low, high = int(low), int(high)
    if low > high:
        raise ValueError(f"{line} is inverted (low={_num(low)}, high={_num(high)}); write "
                         f"interval({_num(high)}, {_num(low)})")
    if low == high:
        raise ValueError(f"{line} is an empty interval (low={_num(low)}, high={_num(high)}): it holds the "
                         f"one value {_num(low)}, nothing to search; widen it to low < high, or fix the value "
                         f"with {key}={_num(low)}")
    try:
        if is_int:
            return IntDistribution(low, high, log=is_log)
        return FloatDistribution(float(low), float(high), log=is_log)
    except ValueError as e:  # e.g. low <= 0 under tag(log, ...)
        raise ValueError(f"{line}: {str(e).replace('`', '')}") from None


def search_space_from_overrides(arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    """(searched parameters, fixed overrides); a later override of a key replaces an earlier one."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    dists: Dict[str, BaseDistribution] = {}
    fixed: Dict[str, str] = {}
    for override in parsed:
        name = override.get_key_element()
        value = distribution_from_override(override)
        if isinstance(value, BaseDistribution):
            dists[name] = value
            fixed.pop(name, None)
        else:
            fixed[name] = value
            dists.pop(name, None)
    return dists, fixed


def distribution_from_config(spec: Any) -> BaseDistribution:
    """The deprecated ``search_space`` form: {type, choices, low, high, log, step}."""
    kind = spec["type"]
    kind = kind.name if hasattr(kind, "name") else str(kind)
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    step, is_log = spec.get("step"), bool(spec.get("log", False))
    if kind == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=is_log, step=int(step or 1))
    return FloatDistribution(float(spec["low"]), float(spec["high"]), log=is_log, step=step)


def override_lines(params: Optional[Mapping[str, Any]], arguments: List[str]) -> List[str]:
    """``hydra.sweeper.params`` as override lines, then the command line's (which win)."""
    return [f"{k!s}={v}" for k, v in params.items()] + list(arguments) if params else list(arguments)


def chosen_config(params: Optional[Mapping[str, Any]], search_space: Optional[Mapping[str, Any]]) -> str:
    """Which of ``params`` and the deprecated ``search_space`` defines the space, with the stock
    plugin's warnings: ``params`` when both are set (even empty), ``search_space`` alone is deprecated."""
    if search_space is None:
        return "params"
    if params is not None:
        warnings.warn("Both hydra.sweeper.params and hydra.sweeper.search_space are configured.\nHydra will use "
                      f"hydra.sweeper.params for defining search space.\n{_MIGRATION_URL}", UserWarning,
                      stacklevel=2)
        return "params"
    warnings.warn("`hydra.sweeper.search_space` is deprecated and will be removed in the next major release.\n"
                  f"Please configure with `hydra.sweeper.params`.\n{_MIGRATION_URL}", UserWarning, stacklevel=2)
    return "search_space"


def build(params: Optional[Mapping[str, Any]], search_space: Optional[Mapping[str, Any]],
          arguments: List[str], use: Optional[str] = None) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    """The sweep's space from ``hydra.sweeper.params`` (or the deprecated ``search_space``) and
    the command line, as the stock plugin reads them; ``use``: :func:`chosen_config`'s answer."""
    use = use or chosen_config(params, search_space)
    dists, fixed = search_space_from_overrides(override_lines(params if use == "params" else None, arguments))
    if use == "search_space":
        for name, spec in search_space.items():
            dists.setdefault(str(name), distribution_from_config(spec))
    return dists, fixed


def grid(lines: List[str], dists: Mapping[str, BaseDistribution]) -> Optional[Dict[str, List[Any]]]:
    """The grid sampler's values of each searched parameter; None when one is continuous.

    A ``range(...)`` contributes the values Hydra's range lists (stop excluded), as
    the stock grid; the rest, every value of their distribution.
    """
    listed: Dict[str, List[Any]] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        if override.is_range_sweep() and not override.value().shuffle:
            listed[override.get_key_element()] = list(override.sweep_iterator())
        else:
            listed.pop(override.get_key_element(), None)
    out: Dict[str, List[Any]] = {}
    for name, dist in dists.items():
        values = listed.get(name) or grid_values(dist)
        if values is None:
            return None
        out[name] = values
    return out


def grid_values(dist: BaseDistribution) -> Optional[List[Any]]:
    """Every value of a finite distribution; None when it is continuous."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log and dist.step != 1:
            return None
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = int(round((dist.high - dist.low) / dist.step)) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(n)]
    return None


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


MAX_TRIAL_NAME = 64


def _short_value(value: Any) -> str:
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.4g}"
    return format_value(value)


def trial_name(number: int, params: Mapping[str, Any]) -> str:
    """A trial's short name, unique in its study: what differs between the sweep's trials.

    Only the searched values (the fixed overrides are the same in every trial), floats to
    4 significant digits, a config group's option (a table's row, ``+hparams_search/rows/x=adam``)
    by its option alone, each key by its last part unless two searched keys share it; then
    ``#<trial number>``, which keeps two trials apart whose values round alike.
    """
    last = [name.replace("/", ".").rsplit(".", 1)[-1] for name in params]
    parts = []
    for (name, value), short in zip(params.items(), last):
        if "/" in name:
            parts.append(_short_value(value))
        else:
            parts.append(f"{short if last.count(short) == 1 else name}={_short_value(value)}")
    text = " ".join(parts)
    if len(text) > MAX_TRIAL_NAME:
        text = text[:MAX_TRIAL_NAME - 1].rstrip() + "…"
    return f"{text} #{number}" if text else f"#{number}"


def trial_overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> List[str]:
    """The overrides of one trial: its sampled values first (they name it), then the fixed ones."""
    overlap = set(params) & set(fixed)
    if overlap:
        raise ValueError(f"parameters both fixed and searched: {sorted(overlap)}")
    items = {name: format_value(value) for name, value in params.items()}
    items.update(fixed)
    return [f"{name}={value}" for name, value in items.items()]


# The stock plugin's names (hydra_plugins.hydra_optuna_sweeper._impl), for code written against it.
create_optuna_distribution_from_override = distribution_from_override
create_optuna_distribution_from_config = distribution_from_config
create_params_from_overrides = search_space_from_overrides
