"""The K replicates of one config, trained epoch by epoch together in one process.

In step, so that a pruner judges epoch e on the mean of every replicate's epoch
e, and a pruned config stops all of its replicates at once. Each replicate is
still a run of its own: its seed sets its weights and data order, and it keeps
its own stream of random numbers (swapped in around each of its epochs), so
replicate i trains exactly as ``seed=<its seed>`` would alone. Each has its own
directory (``replicate_<i>/``: ``last.pt``, ``best.pt``, ``job.json``) and MLflow
run, a child of the config's run. A replicate that has finished writes
``final.json`` there: a resumed config (``trainer.resume=true``) never trains
it again and resumes the others from their ``last.pt``. In a sweep, the trial
that re-runs an interrupted one adopts the interrupted trial's finished
replicates (their runs move under its run, unchanged) and trains the rest.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from sweeps import checkpoint, replicates, run_dir
from sweeps.errors import ConfigError
from sweeps.engine import EpochMetrics
from sweeps.run import Fitting, Plan, finalize, guard_memory, start_fitting, test_fitting
from sweeps.tracking import RunRecorder
from sweeps.trial_link import TrialLink
from sweeps_optuna.contract import TAG_REPLICATE, TAG_REPLICATE_OF, TAG_REPLICATE_SEED, TAG_REPLICATES

log = logging.getLogger("sweeps.train")

FINAL = "final.json"
TAG_FUSED = "sweeps.fused"  # "true" on a replicate's run that trained in a fused model
TAG_KEY = "sweeps.replicate_key"  # Replica.key: where a re-run trial finds an interrupted one's finished replicates


@dataclass
class Replica:
    """One seed of the config: where it lives, and what it has done so far."""

    index: int
    seed: int
    cfg: DictConfig
    out_dir: Path
    identity: dict[str, Any]
    resume_id: str | None = None
    final: dict[str, float] | None = None  # its final metrics, once it has finished
    run_id: str | None = None
    rec: RunRecorder | None = None
    fitting: Fitting | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    history: list[EpochMetrics] = field(default_factory=list)  # this process's epochs, kept after it finished
    trained_s: float = 0.0

    @property
    def label(self) -> str:
        return f"seed {self.seed}: "

    @property
    def binding(self) -> str:
        return run_dir.fingerprint(self.identity)

    @property
    def key(self) -> str:
        """The same in every trial of its study that trains its config and seed."""
        return run_dir.fingerprint({"study": self.identity["study"], "config": self.identity["config"]})


def plan_replicas(plan: Plan) -> list[Replica]:
    """Each replicate's config and directory; with ``trainer.resume``, what it has done
    (before anything is recorded: a directory of another run's is refused here)."""
    out = []
    for i, seed in enumerate(plan.seeds):
        cfg = replicates.with_seed(plan.cfg, seed)
        ident = run_dir.identity(cfg)
        replica = Replica(i, seed, cfg, plan.out_dir / f"replicate_{i}", ident)
        if plan.cfg.trainer.resume:
            replica.resume_id = run_dir.resume_run_id(replica.out_dir, ident)
            done = _finished(replica)
            if done is not None:
                replica.final, replica.run_id = done["metrics"], done.get("run_id")
        out.append(replica)
    return out


def _finished(replica: Replica) -> dict[str, Any] | None:
    path = replica.out_dir / FINAL
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return done if done.get("binding") == replica.binding else None


def _open(plan: Plan, parent: RunRecorder, replica: Replica, splits: Any) -> None:
    replica.out_dir.mkdir(parents=True, exist_ok=True)
    tags = {k: v for k, v in plan.tags.items() if k != TAG_REPLICATES}
    tags.update({TAG_REPLICATE: str(replica.index), TAG_REPLICATE_SEED: str(replica.seed), TAG_KEY: replica.key})
    if parent.run_id:
        tags[TAG_REPLICATE_OF] = parent.run_id
    replica.rec = RunRecorder(replica.cfg, f"{plan.run_name} seed {replica.seed}", tags,
                              resume_run_id=replica.resume_id, parent_run_id=parent.run_id or "").__enter__()
    replica.run_id = replica.rec.run_id
    run_dir.write(replica.out_dir, replica.identity, replica.run_id)
    if replica.resume_id is None:
        replica.rec.log_params({"n_params": plan.n_params})
    started = time.perf_counter()
    replica.fitting = start_fitting(plan, replica.cfg, replica.out_dir, replica.identity, replica.rec, splits,
                                    label=replica.label)
    replica.rng = _rng_state(plan.device)
    replica.history = replica.fitting.training.result.history
    replica.trained_s += time.perf_counter() - started


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(device: torch.device, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _epoch(plan: Plan, replica: Replica) -> None:
    started = time.perf_counter()
    _set_rng_state(plan.device, replica.rng)
    replica.fitting.training.epoch()
    replica.rng = _rng_state(plan.device)
    replica.trained_s += time.perf_counter() - started


def _finish(plan: Plan, replica: Replica, keep: str) -> None:
    """Test, record and close one replicate whose training has ended; then ``final.json``."""
    started = time.perf_counter()
    _set_rng_state(plan.device, replica.rng)
    tested = test_fitting(plan, replica.fitting)
    replica.final = finalize(plan, replica.rec, tested, replica.cfg, replica.out_dir,
                             f"{plan.run_name} seed {replica.seed}",
                             started=started - replica.trained_s)
    replica.rec.__exit__(None, None, None)
    replica.rec = None
    tmp = replica.out_dir / (FINAL + ".tmp")
    tmp.write_text(json.dumps({"binding": replica.binding, "run_id": replica.run_id, "metrics": replica.final}))
    tmp.replace(replica.out_dir / FINAL)
    checkpoint.retain(replica.out_dir, keep, finished=True)
    replica.fitting = None  # its model and data can go


def _adopt(plan: Plan, parent: RunRecorder, replicas: list[Replica]) -> None:
    """Finished replicates of an interrupted trial of this study with this config and seed become
    this trial's: their runs move under ``parent`` as they are, and are not trained again."""
    from sweeps_optuna.contract import INTERRUPTED_STATE, TAG_STATE, TAG_TRIAL

    from sweeps.tracking import client

    store = client(plan.cfg)
    experiment = store.get_run(parent.run_id).info.experiment_id
    for r in replicas:
        for run in store.search_runs([experiment], max_results=50, filter_string=(
                f"tags.`{TAG_KEY}` = '{r.key}' and tags.`{TAG_STATE}` = 'COMPLETE' and attributes.status = 'FINISHED'")):
            old = run.data.tags.get("mlflow.parentRunId")
            if old == parent.run_id or not old or store.get_run(old).data.tags.get(TAG_STATE) != INTERRUPTED_STATE:
                continue  # another trial's, which is not given up: a sampler may ask for one config twice
            final = {k: run.data.metrics[k] for k in (*replicates.AGGREGATED, "n_params") if k in run.data.metrics}
            if len(final) < len(replicates.AGGREGATED) + 1:
                continue
            store.set_tag(run.info.run_id, "mlflow.parentRunId", parent.run_id)
            store.set_tag(run.info.run_id, TAG_REPLICATE_OF, parent.run_id)
            if TAG_TRIAL in plan.tags:
                store.set_tag(run.info.run_id, TAG_TRIAL, plan.tags[TAG_TRIAL])
            r.final, r.run_id = final, run.info.run_id
            log.info(f"{r.label}adopted from interrupted MLflow run {old} (replicate run {r.run_id}): not trained again")
            break


def mean_epoch(replicas: list[Replica], epoch: int) -> EpochMetrics:
    """Epoch ``epoch`` averaged over the replicates; one that stopped early counts with its last epoch."""
    rows = [r.history[min(epoch, len(r.history)) - 1] for r in replicas if r.history]
    fields = {k: sum(getattr(m, k) for m in rows) / len(rows) for k in vars(rows[0]) if k != "epoch"}
    return EpochMetrics(epoch=epoch, **fields)


def fusing(plan: Plan) -> bool:
    """Whether to try fusing (``trainer.fuse_replicates``): auto on CUDA, true anywhere."""
    fuse = plan.cfg.trainer.get("fuse_replicates", "auto")
    return fuse is True or (fuse == "auto" and plan.device.type == "cuda")


def refuse_unfusable(plan: Plan) -> None:
    """``trainer.fuse_replicates=true`` with a config or model that cannot fuse: one paragraph, before
    anything is recorded (two replicates' models built on the CPU and fused, untrained)."""
    if plan.cfg.trainer.get("fuse_replicates", "auto") is not True:
        return
    from sweeps.fused import NotFusable, fuse
    from sweeps.fused_training import check_config
    from sweeps.models import build_model

    ds = plan.cfg.dataset
    try:
        check_config(plan.cfg)
        fuse([build_model(r.cfg) for r in plan.replicas[:2]], (int(ds.channels), int(ds.image_size),
                                                                int(ds.image_size)))
    except NotFusable as e:
        raise ConfigError(_not_fused(e)) from None


def _not_fused(e: Exception) -> str:
    return (f"trainer.fuse_replicates=true, but this config's replicates cannot train as one fused model: {e}. "
            "Nothing was trained. Use trainer.fuse_replicates=auto to train them one after another instead.")


def _fuse(plan: Plan, replicas: list[Replica]) -> list[tuple[Any, list[Replica]]]:
    """(FusedTraining, its replicas) per fused model of ``trainer.fuse_max`` replicates; [] with the
    line that says why when they cannot fuse (``trainer.fuse_replicates=true``: a ConfigError)."""
    if len(replicas) < 2 or not fusing(plan):
        return []
    from sweeps.fused import NotFusable
    from sweeps.fused_training import FusedTraining

    size = int(plan.cfg.trainer.get("fuse_max") or len(replicas))
    groups = [g for g in (replicas[i:i + size] for i in range(0, len(replicas), size)) if len(g) > 1]
    try:
        fused = [(FusedTraining(plan.cfg, [r.fitting.training for r in g], [r.rng for r in g],
                                labels=[r.label for r in g]), g) for g in groups]
    except NotFusable as e:
        if plan.cfg.trainer.get("fuse_replicates") is True:
            raise ConfigError(_not_fused(e)) from None
        log.info(f"replicates trained one after another, not fused: {e}")
        return []
    for _, group in fused:
        for r in group:
            r.rec.set_tags({TAG_FUSED: "true"})
    log.info(f"{sum(len(g) for _, g in fused)} replicates fused into {len(fused)} model(s)")
    return fused


def train(plan: Plan, parent: RunRecorder, link: TrialLink | None, splits: Any) -> dict[str, float]:
    """Every replicate not finished yet, in step; the config's aggregates, logged to ``parent``."""
    cfg, keep = plan.cfg, str(plan.cfg.trainer.get("keep_checkpoints", "best"))
    for r in plan.replicas:
        if r.final is not None:
            log.info(f"{r.label}finished before (MLflow run {r.run_id}): not trained again")
    if link is not None and parent.enabled and parent.run_id:
        _adopt(plan, parent, [r for r in plan.replicas if r.final is None])
    todo = [r for r in plan.replicas if r.final is None]

    def work() -> None:
        for r in todo:
            _open(plan, parent, r, splits)
        prune = link.pruning_callback(cfg.objective) if link is not None else None
        epoch = min(r.fitting.training.result.epochs_run for r in todo) if todo else 0
        for r in [r for r in todo if r.fitting.training.done]:
            _finish(plan, r, keep)  # resumed after its last epoch, before its test
        fused = _fuse(plan, [r for r in todo if r.fitting is not None])
        alone = [r for r in todo if not any(r in group for _, group in fused)]
        while any(r.fitting is not None for r in todo):
            epoch += 1
            training = [r for r in todo if r.fitting is not None and r.fitting.training.result.epochs_run < epoch]
            for model, group in fused:
                if not model.done:
                    started = time.perf_counter()
                    model.epoch()  # writes each member's epoch into its Training
                    for r, state in zip(group, model.rng_states()):
                        r.rng, r.trained_s = state, r.trained_s + time.perf_counter() - started
            for r in [r for r in training if r in alone]:
                _epoch(plan, r)
            if prune is not None:
                prune(mean_epoch(todo, epoch), None)
            for r in training:
                if r.fitting.training.done:
                    _finish(plan, r, keep)

    try:
        guard_memory(plan, work)
    except BaseException as e:
        for r in todo:
            if r.rec is not None:  # pruned, failed or interrupted with the config: each open run says so
                r.rec.__exit__(type(e), e, e.__traceback__)
                if isinstance(e, Exception):
                    checkpoint.retain(r.out_dir, keep, finished=False)
        raise
    how = str(cfg.get("replicate_aggregate", "mean"))
    final = replicates.final_metrics([r.final for r in plan.replicas], how)
    final["wall_time_s"] = time.perf_counter() - plan.started
    parent.log_metrics(final)
    return final
