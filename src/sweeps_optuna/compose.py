"""Each trial's config composed once, and mostly not composed at all: copied from one that was.

Hydra composes a job's config inside the launcher (``load_sweep_config``), and
composing is most of what a sweep does between two short trials: it parses
every YAML file of the defaults list, builds the tree and merges it again (a
tenth of a second for a small app, three for ``sweeps.train`` on a busy
machine). The sweeper hands its launcher this wrapper of Hydra's config loader
instead, which saves that twice:

Once per trial
    The budget check needs the job's config before launch. A config composed
    for launch is kept until the launcher asks for exactly those overrides of
    exactly that master config, and is given to it then, once.

Once per choice of config groups
    Most trials differ from the last only in values (``optim.lr=...``), and
    Hydra applies value overrides after it has composed the tree, in their
    order (``_apply_overrides_to_config``). So a trial's config is Hydra's
    composition with the trial's group overrides alone (kept, one per distinct
    set), copied, with the value overrides then applied by Hydra's own code and
    the ``hydra.overrides`` / ``override_dirname`` fields set as Hydra sets
    them. The result equals Hydra's own composition (``tests/test_compose_once.py``
    compares them). An override of ``hydra``, a sweep, a config that copies
    environment variables (``hydra.job.env_copy``, read afresh each time), or a
    Hydra without the internals this reads takes Hydra's full path. The config
    files are read when a set of group choices is first composed: a YAML file
    edited while the sweep runs reaches its later trials only through a group
    choice not composed before (the sweep's trials stay one experiment).
"""

from __future__ import annotations

import copy
import os
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

try:  # what a copy is finished with: Hydra's own code for the end of a composition
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.config_loader_impl import ConfigLoaderImpl as _HydraLoader

    _apply_overrides = _HydraLoader._apply_overrides_to_config
except (ImportError, AttributeError):  # pragma: no cover - a Hydra without them: every config composed
    get_overrides_dirname = _apply_overrides = None

KEEP_TEMPLATES = 32  # distinct sets of group choices kept (a table sweep has one per row)


class ComposeOnce:
    """Hydra's config loader, keeping the one config composed last for the launch that follows, and a
    template per set of group choices to copy the next trials' configs from."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._kept: Optional[Tuple[DictConfig, List[str], DictConfig]] = None
        # (id of master, group overrides) -> (master, template; None: compose those the whole way)
        self._templates: "OrderedDict[Tuple[int, Tuple[str, ...]], Tuple[DictConfig, Optional[DictConfig]]]" = \
            OrderedDict()
        self._groups: Optional[Tuple[DictConfig, Any, Dict[str, bool]]] = None  # master, repo, key -> is a group
        self._parser: Any = None

    def compose_for_launch(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The job's config; the launcher's next request for the same overrides gets this one."""
        self._kept = None
        cfg = self._compose(master_config, list(overrides))
        self._kept = (master_config, list(overrides), cfg)
        return cfg

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        kept, self._kept = self._kept, None  # given once: the launcher changes the config it gets
        if kept is not None and kept[0] is master_config and kept[1] == list(sweep_overrides):
            return kept[2]
        return self._compose(master_config, list(sweep_overrides))

    # ------------------------------------------------------------------ the template path

    def _compose(self, master: DictConfig, overrides: List[str]) -> DictConfig:
        split = self._split(master, overrides)
        if split is None:
            return self._loader.load_sweep_config(master, overrides)
        groups, values, task = split
        key = (id(master), tuple(o.input_line for o in groups))
        held = self._templates.get(key)
        if held is None or held[0] is not master:
            template = self._loader.load_sweep_config(master, [o.input_line for o in groups])
            held = (master, template if _copyable(template) else None)
            self._templates[key] = held
            while len(self._templates) > KEEP_TEMPLATES:
                self._templates.popitem(last=False)
        self._templates.move_to_end(key)
        if held[1] is None:  # not copyable: Hydra's whole path, every time
            return self._loader.load_sweep_config(master, overrides)
        return _from_template(held[1], master, values, task)

    def _split(self, master: DictConfig, overrides: List[str]) -> Optional[Tuple[List[Any], List[Any], List[Any]]]:
        """(group overrides, value overrides, all of them parsed), Hydra's way (``defaults_list.Overrides``:
        a dict value, or a key that is no config group, is a value); None: compose the whole way."""
        if _apply_overrides is None:
            return None
        try:
            if self._parser is None:
                from hydra.core.override_parser.overrides_parser import OverridesParser

                self._parser = OverridesParser.create()
            parsed = self._parser.parse_overrides(overrides=overrides)
            is_group = self._group_test(master)
        except Exception:  # noqa: BLE001 - any doubt: Hydra's own path, and its own error
            return None
        groups, values = [], []
        for o in parsed:
            if o.key_or_group.split(".")[0].split("/")[0] == "hydra" or o.is_sweep_override() or o.package is not None:
                return None  # hydra.*, and also a bare hydra={...}, which is_hydra_override() lets through
            (values if isinstance(o.value(), dict) or not is_group(o.key_or_group) else groups).append(o)
        return groups, values, parsed

    def _group_test(self, master: DictConfig) -> Any:
        """Whether a key names a config group, in the repository Hydra composes this master config from
        (the primary config's ``hydra.searchpath`` included)."""
        if self._groups is None or self._groups[0] is not master:
            hydra_overrides = OmegaConf.to_container(master.hydra.overrides.hydra)
            _, repo = self._loader._parse_overrides_and_create_caching_repo(
                master.hydra.job.config_name, list(hydra_overrides))
            self._groups = (master, repo, {})
        _, repo, known = self._groups

        def is_group(key: str) -> bool:
            if key not in known:
                known[key] = bool(repo.group_exists(key))
            return known[key]

        return is_group

    # ------------------------------------------------------------------ the rest is Hydra's loader

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # unpickling, before _loader exists
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __getstate__(self) -> dict:
        # a launcher pickled for a remote job carries no config (the remote process makes its own)
        return {"_loader": self._loader, "_kept": None, "_templates": OrderedDict(), "_groups": None,
                "_parser": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _copyable(template: DictConfig) -> bool:
    """Hydra fills ``hydra.job.env_set`` from the environment on every composition (``env_copy``), so a
    config that copies variables is composed the whole way each time: the environment may have changed
    since (a worker's ``CUDA_VISIBLE_DEVICES``), and a value override may change the list itself."""
    job = template.hydra.job
    return not OmegaConf.is_interpolation(job, "env_copy") and len(job.env_copy) == 0


def _from_template(template: DictConfig, master: DictConfig, values: List[Any], task: List[Any]) -> DictConfig:
    """The end of Hydra's ``_load_configuration_impl`` and ``load_sweep_config`` on a copy of the template:
    the value overrides applied, then the fields that list the overrides."""
    cfg = copy.deepcopy(template)
    try:
        _apply_overrides(values, cfg)
        cfg.hydra.overrides.task = [o.input_line for o in task]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        cfg.hydra.runtime.cwd = os.getcwd()
    except OmegaConfBaseException as e:  # as Hydra's load_configuration raises it
        raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
    OmegaConf.copy_cache(from_config=master, to_config=cfg)
    return cfg
