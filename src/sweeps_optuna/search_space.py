"""Hydra sweep overrides (``choice``, ``range``, ``interval``, ``tag``) as Optuna distributions.

The same syntax as the stock hydra-optuna-sweeper, read from ``hydra.sweeper.params``
and the command line (the command line wins), plus the stock plugin's
deprecated ``search_space`` mapping. A parameter that holds fewer than two
values is refused here, with the override named, before any study exists.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

_NO_VALUE = ("lists no value: range(start, stop[, step]) stops before stop, so it needs start < stop for a "
             "positive step (start > stop for a negative one)")


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
        # Hydra's range() excludes its stop: the distribution spans the values it lists.
        value = override.value()
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{line} {_NO_VALUE}")
        low, high, step = min(values), max(values), abs(value.step)
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


def build(params: Optional[Mapping[str, Any]], search_space: Optional[Mapping[str, Any]],
          arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    """The sweep's space from ``hydra.sweeper.params`` (or the deprecated ``search_space``) and
    the command line, as the stock plugin reads them."""
    lines = [f"{k!s}={v}" for k, v in params.items()] if params else []
    dists, fixed = search_space_from_overrides(lines + list(arguments))
    if search_space and not params:
        for name, spec in search_space.items():
            dists[str(name)] = distribution_from_config(spec)
    return dists, fixed


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


def trial_overrides(params: Mapping[str, Any], fixed: Mapping[str, str]) -> List[str]:
    """The overrides of one trial: its sampled values first (they name it), then the fixed ones."""
    overlap = set(params) & set(fixed)
    if overlap:
        raise ValueError(f"parameters both fixed and searched: {sorted(overlap)}")
    items = {name: format_value(value) for name, value in params.items()}
    items.update(fixed)
    return [f"{name}={value}" for name, value in items.items()]
