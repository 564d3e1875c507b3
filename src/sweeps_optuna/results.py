"""What a finished sweep leaves behind: ``optimization_results.yaml`` and its closing line.

Both describe the whole study, not the share of the process that writes them,
so that the last process to finish (on any host) leaves the complete picture.
The file keeps the stock plugin's keys (``name: optuna``, ``best_params`` and
``best_value``, or ``solutions`` for several objectives), so that scripts
written for it read ours; what is ours is added beside them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from .contract import INFEASIBLE, INTERRUPTED, OVERRIDES, SURPLUS, is_counted, is_failure
from .liveness import owner_text
from .storage import redact

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


def counts(trials: List[FrozenTrial]) -> Dict[str, int]:
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED and not t.user_attrs.get(INFEASIBLE) for t in trials),
        "infeasible": sum(t.state == TrialState.PRUNED and bool(t.user_attrs.get(INFEASIBLE)) for t in trials),
        "failed": sum(is_failure(t) for t in trials),
        "interrupted": sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(INTERRUPTED)) for t in trials),
        "surplus": sum(bool(t.user_attrs.get(SURPLUS)) for t in trials),
    }


def _best(study: optuna.Study, results: Dict[str, Any]) -> tuple[Optional[FrozenTrial], str]:
    """The best trial (the first of the Pareto front for several objectives) and how to say it."""
    if len(study.directions) == 1:
        try:
            best = study.best_trial
        except ValueError:
            return None, "n/a"
        results.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
        return best, f"{best.value:.6g} (trial {best.number})"
    front = study.best_trials
    results["solutions"] = [{"params": dict(t.params), "values": list(t.values), "number": t.number} for t in front]
    return (front[0] if front else None), f"{len(front)} Pareto-optimal trial(s)"


def finish(study: optuna.Study, n_trials: int, storage_url: str, sweep_dir: str, wall: float,
           compose: Callable[[List[str]], DictConfig]) -> Dict[str, Any]:
    """Write the results file, log the closing line, and return the results."""
    trials = study.get_trials(deepcopy=False)
    count = counts(trials)
    counted = sum(is_counted(t) for t in trials)
    results: Dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": redact(storage_url), "n_trials": n_trials,
                               "counted_trials": counted, "trials": count}
    best, best_text = _best(study, results)
    if best is not None and best.user_attrs.get(OVERRIDES) is not None:
        try:
            cfg = compose(list(best.user_attrs[OVERRIDES]))
            results["best_config"] = OmegaConf.to_container(
                OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=False)
        except Exception as e:  # noqa: BLE001 - the file is still worth writing
            log.warning(f"could not compose the best trial's config ({e})")
    results["wall_time_s"] = round(wall, 1)
    out = Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(redact(OmegaConf.to_yaml(OmegaConf.create(results))))  # the best config too
    running = [t for t in trials if t.state == TrialState.RUNNING]
    elsewhere = (f" | {len(running)} trial(s) still running in other processes ("
                 + ", ".join(sorted({owner_text(t) for t in running})) + ")") if running else ""
    log.info(f"Sweep '{study.study_name}': {counted}/{n_trials} trials | {count['complete']} complete, "
             f"{count['pruned']} pruned, {count['failed']} failed, {count['infeasible']} infeasible"
             + (f", {count['interrupted']} interrupted (re-run)" if count["interrupted"] else "")
             + elsewhere + f" | best {best_text} | {wall:.1f}s | results: {out / RESULTS_FILE}")
    return results
