"""Command-line overrides checked before Hydra runs.

Hydra's own message for a misspelled key tells the user to *append* it with
``+``, which silently trains with the default instead. Checking key names and
group options against the config tree first lets us name the close match.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from sweeps_optuna import stock
from sweeps.cli import compose, config_dirs, use_config_dirs, user_errors
from sweeps.errors import ConfigError, close_matches


def group_options(group: str) -> list[str]:
    return sorted({p.stem for d in config_dirs() if (d / group).is_dir() for p in (d / group).glob("*.yaml")})


def _option_files(group: str, option: str) -> list[Path]:
    return [d / group / f"{option}.yaml" for d in config_dirs() if (d / group / f"{option}.yaml").is_file()]


def _leaf_keys(node, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            child = node._get_node(k)
            keys.append(f"{prefix}{k}")
            if isinstance(child, DictConfig):
                keys += _leaf_keys(child, f"{prefix}{k}.")
    return keys


def _first_value(override) -> str | None:
    if override.is_sweep_override():
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else []
        return str(values[0]) if values else None
    value = override.value()
    return None if value is None else str(value)


def _refuse_parse(message: str):
    raise ValueError(message)


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(Hydra's flags with their values, the overrides), wherever the overrides stand.

    Hydra's parser takes the overrides as one run of words, so
    ``dataset=digits --multirun hparams_search=blocks`` is refused and
    ``--cfg job`` would read ``job`` as an override. None when Hydra's parser
    refuses the line: then Hydra reports it.
    """
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.error = _refuse_parse  # no usage text and exit from here
    try:
        ns, extras = parser.parse_known_intermixed_args(list(argv))
    except (ValueError, TypeError):
        return None
    if extras:
        return None
    overrides = list(ns.overrides or [])
    flags, pending = [], iter(overrides)
    upcoming = next(pending, None)
    for arg in argv:
        if upcoming is not None and arg == upcoming:
            upcoming = next(pending, None)
        else:
            flags.append(arg)
    return flags, overrides


def check(args: Sequence[str], config_name: str = "train") -> list[str]:
    """Raise ConfigError for an unknown group option or config key; return the overrides.

    ``args`` are overrides only (``split_argv`` takes Hydra's flags out of a command line).
    """
    args = list(args)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        raise ConfigError(f"could not parse the command line: {e}") from None
    groups = {p.name for d in config_dirs() if d.is_dir() for p in d.iterdir() if p.is_dir()}
    choices, keys = [], []
    _check_sweeper(parsed, config_name)
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete() or o.is_add() or o.is_force_add():
            continue
        if key in groups:
            options = group_options(key)
            value = _first_value(o)
            if value is not None and value != "null" and value not in options:
                raise ConfigError(
                    f"{key}={value} is not an option of the '{key}' config group.{close_matches(value, options)} "
                    f"The options are: {', '.join(options)} (files in conf/{key}/"
                    + "".join(f", {d / key}/" for d in config_dirs()[1:]) + ")."
                )
            if value is not None:
                choices.append(f"{key}={value}")
        elif o.is_sweep_override() and not o.is_discrete_sweep():
            keys.append(key)  # interval()/range() search params: check the key only
        else:
            keys.append(key)
    if keys or choices:
        cfg = _compose_naming_files(choices, config_name)
        known = _leaf_keys(cfg)
        for key in keys:
            if key not in known and not _selectable(cfg, key):
                elsewhere = _options_with_key(key, groups)
                if elsewhere:
                    group = key.split(".", 1)[0]
                    full = compose(choices, config_name, with_hydra=True)
                    chosen = OmegaConf.select(full, f"hydra.runtime.choices.{group}", default=None)
                    raise ConfigError(
                        f"'{key}' is not a key of {group}={chosen or 'the default'}; it is a key of "
                        f"{', '.join(f'{group}={o}' for o in elsewhere)}. Choose that option "
                        f"({group}={elsewhere[0]} {key}=...) or drop {key}."
                    )
                raise ConfigError(
                    f"'{key}' is not a key of the composed config.{close_matches(key, known)} "
                    f"Check the spelling against `python -m sweeps.train --cfg job`; to add a new key on "
                    f"purpose, write +{key}=..."
                )
    return args


_NOT_FOUND = re.compile(r"Could not find '([^']+)/([^'/]+)'")


def _compose_naming_files(choices: list[str], config_name: str) -> DictConfig:
    """compose(), where a missing option in a config file's defaults list names that file.

    Hydra says ``In 'train': Could not find 'optim/adamW'`` for a typo inside the
    user's own experiment file; the command line's typos get the close match,
    and so should the file's.
    """
    try:
        return compose(choices, config_name)
    except ConfigError as e:
        found = _NOT_FOUND.search(str(e))
        if not found:
            raise
        group, option = found.group(1).strip("/"), found.group(2)
        options = group_options(group)
        for choice in choices:
            chosen_group, _, chosen = choice.partition("=")
            for path in _option_files(chosen_group.lstrip("+~"), chosen):
                if re.search(rf"^\s*-\s*(override\s+)?/?{re.escape(group)}\s*:\s*{re.escape(option)}\s*$",
                             path.read_text(), re.MULTILINE):
                    raise ConfigError(
                        f"{path} (chosen by {choice}) selects {group}: {option} in its defaults list, which is not "
                        f"an option of the '{group}' config group.{close_matches(option, options)} The options are: "
                        f"{', '.join(options)}. Fix that line of {path.name}.") from None
        raise


_MISSING = object()
OUR_SWEEPER = "sweeps_optuna"


def is_ours(target: str) -> bool:
    """Our sweeper's class, or the stock plugin's name, which is ours when that plugin is absent
    (see hydra_plugins.sweeps_optuna_sweeper.optuna_sweeper)."""
    return OUR_SWEEPER in target or (target == stock.TARGET and not stock.installed())


def _check_sweeper(parsed, config_name: str) -> None:
    """interval() searches and hydra.sweeper.* keys need our sweeper; name a misspelled sweeper key.

    Without it Hydra's basic sweeper ends in a traceback ("does not support
    sweep type INTERVAL_SWEEP"), and a misspelled sweeper key gets Hydra's advice
    to add it with +, which the sweeper would then ignore.
    """
    searches = [o.input_line for o in parsed if o.is_sweep_override() and not o.is_discrete_sweep()]
    sweeper_keys = [o for o in parsed if o.key_or_group.startswith("hydra.sweeper.")
                    and not (o.is_add() or o.is_force_add() or o.is_delete())]
    if not searches and not sweeper_keys:
        return
    groups = [f"{o.key_or_group}={_first_value(o)}" for o in parsed
              if (o.key_or_group == "hparams_search" or o.key_or_group.startswith("hydra/"))
              and _first_value(o) is not None]
    try:
        cfg = compose(groups, config_name, with_hydra=True)
    except ConfigError:
        return  # a wrong group option: reported by the caller
    sweeper = cfg.hydra.sweeper
    ours = is_ours(str(OmegaConf.select(sweeper, "_target_", default="")))
    needs_ours = ("{what} needs the Optuna sweeper, but this command runs Hydra's basic sweeper (which only "
                  f"expands lists and choice()/range()). Add hydra/sweeper={OUR_SWEEPER} (and --multirun), or use "
                  "an hparams_search config, which selects it.")
    if searches and not ours:
        raise ConfigError(needs_ours.format(what=searches[0]))
    known = [f"hydra.sweeper.{k}" for k in _leaf_keys(sweeper)]
    for o in sweeper_keys:
        key = o.key_or_group
        if _selectable(sweeper, key[len("hydra.sweeper."):]):
            continue
        if not ours:
            optuna_cfg = compose([f"hydra/sweeper={OUR_SWEEPER}"], config_name, with_hydra=True)
            if _selectable(optuna_cfg.hydra.sweeper, key[len("hydra.sweeper."):]):
                raise ConfigError(needs_ours.format(what=o.input_line))
        name = OUR_SWEEPER if ours else str(OmegaConf.select(sweeper, "_target_", default="this")).rsplit(".", 1)[-1]
        raise ConfigError(
            f"'{key}' is not a setting of the {name} sweeper.{close_matches(key, known)} "
            f"See `python -m sweeps.train hydra/sweeper={OUR_SWEEPER} --cfg hydra -p hydra.sweeper` for ours."
        )


def _options_with_key(key: str, groups: set[str]) -> list[str]:
    """The options of ``key``'s config group that have it (optim.momentum: sgd, not adam)."""
    group, _, rest = key.partition(".")
    if group not in groups or not rest:
        return []
    found = []
    for option in group_options(group):
        for path in _option_files(group, option)[:1]:
            try:
                if _selectable(OmegaConf.load(path), rest):
                    found.append(option)
            except Exception:  # noqa: BLE001 - an option file we cannot read answers nothing
                continue
    return found


def _selectable(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` (e.g. a list index, model.channels.0) names a node of ``cfg``."""
    try:
        return OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is not _MISSING
    except InterpolationResolutionError:
        return True  # it exists; its value needs Hydra's runtime (e.g. ${hydra:runtime.cwd} in paths.*)


def _flag_values(flags: list[str], names: tuple[str, ...]) -> list[str]:
    """The values of a Hydra flag, written ``--flag value`` or ``--flag=value``."""
    values = []
    for i, arg in enumerate(flags):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                values.append(value)
            elif i + 1 < len(flags):
                values.append(flags[i + 1])
    return values


def check_or_exit() -> None:
    """Check ``sys.argv``'s overrides, and put them after Hydra's flags, where Hydra's parser wants them."""
    split = split_argv(sys.argv[1:])
    if split is None:
        return  # Hydra's parser refuses the line and says why
    flags, overrides = split
    use_config_dirs(_flag_values(flags, ("--config-dir", "-cd")))
    with user_errors():
        check(overrides)
    sys.argv[1:] = [*flags, *overrides]
