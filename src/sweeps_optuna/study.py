"""The study a sweep runs in: directions, sampler, pruner, and one study per sweep.

A study is created by the first sweep process and loaded by every later one
(workers, a second host, a re-run that resumes it). It remembers what made it
(its *signature*: search space and fixed overrides), so that two experiments
are never mixed in one search:

* a study the user named, in a storage the user chose, is theirs: a different
  command under that name is refused, with the differences listed;
* a study under a default name (the stock plugin keeps those in memory, so its
  users never see two sweeps meet) in the default storage is the command's:
  a different command gets the first free derived name (``<name>-2``, ...),
  and re-running a command finds its own study again by its signature.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any, Dict, List, MutableSequence, Optional, Sequence, Tuple

import optuna
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, distribution_to_json


from .contract import SIGNATURE, UserError, is_counted
from .storage import open_storage, redact, sqlite_path

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
WORKER_SEED_STRIDE = 7919  # a prime: worker k's sampler seed is seed + k * stride


def resolve_directions(raw: Any, from_app: Optional[List[str]]) -> List[str]:
    """``hydra.sweeper.direction`` (one or a list), else the app's, else minimize (the stock default)."""
    if raw is None:
        return list(from_app) if from_app else ["minimize"]
    items = list(raw) if isinstance(raw, (MutableSequence, ListConfig, tuple)) else [raw]
    names = [d.name if isinstance(d, Enum) else str(d).lower() for d in items]  # the config's Direction enum
    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise UserError(f"hydra.sweeper.direction={raw!s} is not minimize or maximize (or a list of them, one per "
                        "objective); write e.g. hydra.sweeper.direction=maximize, or leave it null to follow "
                        "the task's objective.")
    return names


# Samplers the stock plugin offers that Optuna has since removed: what replaces each.
REMOVED_SAMPLERS = {
    "optuna.samplers.MOTPESampler": ("motpe", "tpe", "TPESampler handles several objectives, and MOTPESampler "
                                     "was removed in Optuna 4"),
}


def check_sampler(cfg: Any) -> None:
    """A sampler Optuna no longer has is named, with its replacement, before anything runs."""
    target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    if target in REMOVED_SAMPLERS:
        option, instead, why = REMOVED_SAMPLERS[target]
        raise UserError(f"The sampler hydra/sweeper/sampler={option} ({target}) no longer exists: {why}. Use "
                        f"hydra/sweeper/sampler={instead} (in a config: override /hydra/sweeper/sampler: {instead}); "
                        "its keys seed, n_startup_trials, consider_prior, prior_weight, consider_magic_clip and consider_endpoints carry over (n_ehvi_candidates has none: drop it).")


def is_grid(sampler_cfg: Any) -> bool:
    return isinstance(sampler_cfg, DictConfig) and get_class(sampler_cfg._target_) is optuna.samplers.GridSampler


def build_sampler(cfg: Any, grid: Optional[Dict[str, List[Any]]], worker_index: int) -> optuna.samplers.BaseSampler:
    """The sampler from its config node; keys left null are not passed (the sampler's own default)."""
    if not isinstance(cfg, DictConfig):
        return cfg  # already a sampler (e.g. set from Python)
    spec = OmegaConf.to_container(cfg, resolve=True)
    cls = get_class(spec.pop("_target_"))
    spec.pop("_partial_", None)
    spec = {k: v for k, v in spec.items() if v is not None}
    for key, value in spec.items():
        if isinstance(value, dict) and "_target_" in value:
            spec[key] = instantiate(value)  # e.g. independent_sampler
    if grid is not None:
        # The grid's order comes from its seed, and a trial holds its point as an index into
        # that order: every process of a sweep (workers, re-runs) must shuffle alike.
        spec["search_space"] = grid
        spec.setdefault("seed", 0)
    elif spec.get("seed") is not None and worker_index:
        spec["seed"] = int(spec["seed"]) + WORKER_SEED_STRIDE * worker_index  # workers must not mirror each other
    return cls(**spec)


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    return instantiate(cfg) if cfg else optuna.pruners.NopPruner()


def signature(dists: Dict[str, BaseDistribution], fixed: Dict[str, str],
              ignores: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """What makes a sweep this sweep: its searched and fixed keys, less those that may differ."""
    def kept(name: str) -> bool:
        return not name.startswith(tuple(ignores))

    return {"search_space": {name: distribution_to_json(d) for name, d in sorted(dists.items()) if kept(name)},
            "fixed": {name: str(v) for name, v in sorted(fixed.items()) if kept(name)}}


def differences(theirs: Dict[str, Dict[str, str]], mine: Dict[str, Dict[str, str]]) -> List[str]:
    """What another sweep's signature has that this one's has not, as short phrases."""
    changes = []
    searched = set(theirs.get("search_space", {})) | set(mine["search_space"])
    for part in ("fixed", "search_space"):
        old, new = theirs.get(part, {}), mine[part]
        for name in sorted(set(old) | set(new)):
            if part == "fixed" and name in searched:
                continue  # fixed in one sweep, searched in the other: said below
            if old.get(name) == new.get(name):
                continue
            if part == "fixed":
                was = f"{name}={old[name]}" if name in old else f"no {name}"
                now = f"{name}={new[name]}" if name in new else f"no {name}"
                changes.append(f"{was} there, {now} here")
            elif name in old and name in new:
                changes.append(f"{name} searched over other values here")
            else:
                changes.append(f"{name} searched {'there' if name in old else 'here'} only")
    return changes


def open_study(name: str, storage_url: Any, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               directions: List[str]) -> Tuple[optuna.Study, bool]:
    """(the study, whether this process created it); a storage that cannot be opened is the user's to fix."""
    try:
        storage = open_storage(storage_url)
        try:
            return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                       directions=directions, load_if_exists=False), True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except Exception as e:  # noqa: BLE001 - a URL, server or driver problem; said in one paragraph
        first = redact(str(e).splitlines()[0]) if str(e) else ""
        db = sqlite_path(str(storage_url)) if isinstance(storage_url, str) else None
        if db is not None and db.is_file():
            raise UserError(
                f"The Optuna storage {db} (hydra.sweeper.storage) cannot be read ({type(e).__name__}: {first}): it "
                "is not an Optuna SQLite database, or a damaged one. Nothing was run, and the file was left as it is. "
                "Restore it from a copy, or point hydra.sweeper.storage to another database (sqlite:///path.db); "
                "to start afresh, move the file aside.") from None
        raise UserError(
            f"The Optuna storage hydra.sweeper.storage={redact(str(storage_url))} cannot be opened "
            f"({type(e).__name__}: {first}). Check the URL, that the database server is up and its driver "
            "installed (e.g. psycopg for postgresql://: pip install -e .[cluster]), or leave "
            "hydra.sweeper.storage=null for the SQLite study in multirun/optuna.db.") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        what = f"Study '{name}' in {redact(str(storage_url))} optimizes {have}, but this sweep asks for {directions}"
        raise StudyMismatch(f"{what}. Use another hydra.sweeper.study_name, or delete the study (optuna delete-study "
                            f"--study-name {name} --storage {redact(str(storage_url))}).", what)
    return study, False


class StudyMismatch(UserError):
    """The study under this name was made by another sweep (search space, fixed overrides or directions).

    ``what``: that in one clause, for a sweep that goes on under a derived name instead of refusing."""

    def __init__(self, message: str, what: str):
        super().__init__(message)
        self.what = what


def open_own_study(name: str, storage_url: Any, sampler: optuna.samplers.BaseSampler,
                   pruner: optuna.pruners.BasePruner, directions: List[str], mine: Dict[str, Dict[str, str]],
                   chosen: bool, allow_changes: bool) -> Tuple[optuna.Study, bool]:
    """(this sweep's study, whether it was created): ``name``, or when the user did not choose
    ``name`` and its storage (``chosen`` False) and another sweep made it, the first derived name
    whose study is this sweep's or free."""
    k = 1
    while True:
        candidate = name if k == 1 else f"{name}-{k}"
        try:
            study, created = open_study(candidate, storage_url, sampler, pruner, directions)
            claim_or_check(study, created, mine, storage_url, allow_changes)
        except StudyMismatch as e:
            if chosen:
                raise
            if k == 1:
                log.info(f"{e.what}. This sweep's study gets a name of its own (re-running "
                         "this command finds it again); name it with hydra.sweeper.study_name to choose.")
            k += 1
            continue
        if k > 1:
            log.info(f"study '{candidate}': {'new' if created else 'found again by its search space and overrides'}")
        return study, created


def claim_or_check(study: optuna.Study, created: bool, mine: Dict[str, Dict[str, str]], storage_url: Any,
                   allow_changes: bool) -> None:
    """Stamp a new study with this sweep's signature, or refuse to mix this sweep into another's.

    Re-running a command resumes its study; a different command under the same
    study name would silently add its trials to the old ones, compare them as
    one search and report the old best.
    """
    theirs = None if created else study.user_attrs.get(SIGNATURE)
    if not isinstance(theirs, dict):
        study.set_user_attr(SIGNATURE, mine)  # new, or made before signatures were kept
        return
    changes = differences(theirs, mine)
    if not changes:
        return
    listed = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    if allow_changes:
        log.warning(f"Study '{study.study_name}' continues with changes (hydra.sweeper.allow_study_changes=true): "
                    f"{listed}.")
        return
    done = sum(is_counted(t) for t in study.get_trials(deepcopy=False))
    what = f"Study '{study.study_name}' in {redact(str(storage_url))} was made by another sweep ({listed})"
    raise StudyMismatch(
        f"{what}; its {done} trial(s) would be mixed with this sweep's. Re-run that sweep's command to resume it; or give this sweep "
        "its own study with hydra.sweeper.study_name=<new name> (and tracking.experiment=<new name> for its own "
        "MLflow experiment); or continue the old study with these changes on purpose with "
        "hydra.sweeper.allow_study_changes=true.", what)
