"""One training run, from a composed config to its MLflow record and its final metrics.

Three steps:

1. :func:`prepare`: every check that can refuse the run (the parameter budget
   on a model built on the meta device, writable directories, the device and
   data pipeline, whose directory this is) before any data is loaded or any
   MLflow run is recorded; the config's values were checked before this module
   was even imported (``sweeps.config.validate``, in :func:`sweeps.train.task`);
2. :func:`fit_and_test`: data, model, training with per-epoch validation (and
   pruning, in a sweep), test with the best checkpoint;
3. :func:`finalize`: final metrics, the best checkpoint and figures, in the run.

With ``replicates=K`` step 2 and 3 happen once per seed, in step
(:mod:`sweeps.lockstep`), and the run holds the replicates' aggregates.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps import checkpoint, run_dir
from sweeps.data import load_splits
from sweeps.data.pipeline import Pipeline, build_pipeline, select_pipeline
from sweeps.engine import FitResult, Training, autocast_dtype, evaluate, prepare_model, select_device, tta_views
from sweeps.errors import OutOfMemory
from sweeps.models import build_model, check_budget, model_size
from sweeps.preflight import check_job, disk_full_is_one_paragraph
from sweeps.tracking import RunRecorder, log_config_artifacts, overrides_run_name
from sweeps.trial_link import TrialLink
from sweeps import replicates
from sweeps_optuna.contract import COMPLETE, MAX_TAG, TAG_OVERRIDES, TAG_REPLICATES, TAG_STATE, TAG_STUDY, TAG_TRIAL

log = logging.getLogger("sweeps.train")


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a plain RuntimeError.

    Both mean the same to a sweep: this batch size does not fit this model here.
    """
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error))


@dataclass
class Plan:
    """A run that passed every check; nothing has been loaded or recorded yet."""

    cfg: DictConfig
    n_params: int
    out_dir: Path
    device: torch.device
    pipeline: str
    run_name: str
    identity: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    resume_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    seeds: list[int] = field(default_factory=list)
    replicas: list[Any] = field(default_factory=list)  # lockstep.Replica of each seed, when there are several
    in_sweep_process: bool = False  # a job of an in-process sweep: another trial follows in this process


@dataclass
class Tested:
    result: FitResult
    best_state: dict
    test_loss: float
    test_acc: float
    test_preds: Any
    test_labels: Any


@dataclass
class Fitting:
    """One model in training, and what testing it needs."""

    cfg: DictConfig
    training: Training
    pipe: Pipeline
    labels: Any


def prepare(cfg: DictConfig) -> Plan:
    n_params = model_size(cfg)
    check_budget(n_params, cfg)  # once per config, before any replicate starts
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    # Before the MLflow run opens: a full disk or an unwritable store ends here, in one paragraph.
    check_job(cfg, out_dir, multirun=hc.mode == RunMode.MULTIRUN)
    tags = {}
    if cfg.trial.get("number") is not None:
        tags = {TAG_STUDY: str(cfg.trial.study), TAG_TRIAL: str(cfg.trial.number)}
    device = select_device(str(cfg.trainer.device))
    ident = run_dir.identity(cfg)
    # A directory that holds another run's files is refused here, before anything is recorded.
    resume_id = run_dir.resume_run_id(out_dir, ident) if cfg.trainer.resume else None
    overrides = overrides_run_name(list(hc.overrides.task))
    if cfg.tracking.get("run_name"):
        tags[TAG_OVERRIDES] = overrides[:MAX_TAG]  # the report reads a run's overrides here
    seeds = replicates.seeds(cfg)
    if len(seeds) > 1:
        tags[TAG_REPLICATES] = str(len(seeds))
    plan = Plan(cfg, n_params, out_dir, device, select_pipeline(cfg, device),
                cfg.tracking.get("run_name") or overrides, ident, tags, resume_id, seeds=seeds)
    if len(seeds) > 1:
        from sweeps import lockstep

        plan.replicas = lockstep.plan_replicas(plan)  # each replicate's directory is checked as the run's is
        lockstep.refuse_unfusable(plan)
    return plan


def start_fitting(plan: Plan, cfg: DictConfig, out_dir: Path, identity: dict[str, Any], rec: RunRecorder,
                  splits: Any, label: str = "") -> Fitting:
    """Model, data pipeline and optimizer of ``cfg`` (its seed sets the weights and the data
    order), resumed from ``out_dir`` with ``trainer.resume``; each epoch goes to ``rec``."""
    device, t = plan.device, cfg.trainer
    torch.manual_seed(int(cfg.seed))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = prepare_model(build_model(cfg).to(device), cfg, device)
    pipe = build_pipeline(cfg, splits, device, plan.pipeline)
    loader = pipe.train
    steps = len(loader) if t.limit_train_batches is None else min(len(loader), int(t.limit_train_batches))

    def train_batches(epoch):
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            yield batch
            if step == 0:  # the first step is done: the run's record may open now, the last trial's figures be drawn
                rec.release()
                release_figures()

    def on_epoch_end(m, _result):
        rec.log_metrics({k: v for k, v in vars(m).items() if k != "epoch"}, step=m.epoch)
        log.info(f"{label}epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_acc:.4f} | "
                 f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f} | lr {m.lr:.3g} | {m.epoch_time:.1f}s")

    training = Training(cfg, model, train_batches, steps, pipe.val_batches, device, on_epoch_end,
                        checkpoint_dir=out_dir, loader_generator=pipe.generator,
                        binding=run_dir.fingerprint(identity))
    return Fitting(cfg, training, pipe, splits.test.labels)


def test_fitting(plan: Plan, fitting: Fitting) -> Tested:
    """The best epoch's weights on the test split."""
    training, t = fitting.training, fitting.cfg.trainer
    training.model.load_state_dict(training.best_state)
    test_loss, test_acc, test_preds = evaluate(training.model, fitting.pipe.test_batches(), plan.device,
                                               autocast_dtype(str(t.precision), plan.device), tta_views(t),
                                               keep_preds=True)
    return Tested(training.result, training.best_state, test_loss, test_acc, test_preds, fitting.labels)


def guard_memory(plan: Plan, work):
    """``work()``, with out of memory turned into one paragraph that names the fix.

    The paragraph is raised outside the except block, once every reference to device
    memory in ``work``'s frames has gone: in a sweep the exception outlives this
    frame, and the next trial needs the memory.
    """
    try:
        return work()
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(e):
            raise
    gc.collect()
    torch.cuda.empty_cache()
    raise _out_of_memory(plan, autocast_dtype(str(plan.cfg.trainer.precision), plan.device))


def fit_and_test(plan: Plan, rec: RunRecorder, link: TrialLink | None, splits: Any) -> Tested:
    def work() -> Tested:
        fitting = start_fitting(plan, plan.cfg, plan.out_dir, plan.identity, rec, splits)
        prune = link.pruning_callback(plan.cfg.objective) if link is not None else None
        training = fitting.training
        while not training.done:
            metrics = training.epoch()
            if prune is not None:
                prune(metrics, training.result)
        return test_fitting(plan, fitting)

    return guard_memory(plan, work)


def _out_of_memory(plan: Plan, amp: torch.dtype | None) -> OutOfMemory:
    t = plan.cfg.trainer
    name = OmegaConf.select(HydraConfig.get(), "runtime.choices.model", default=None) or plan.cfg.model.get("_target_")
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")
    from sweeps.lockstep import fusing

    fused = len(plan.seeds) > 1 and fusing(plan)
    replicas = (f", {len(plan.seeds)} replicates {'fused' if fused else 'in step'}" if len(plan.seeds) > 1 else "")
    return OutOfMemory(
        f"out of {plan.device.type.upper()} memory training model={name} ({plan.n_params:,} parameters) at "
        f"trainer.batch_size={t.batch_size} (trainer.eval_batch_size={t.eval_batch_size}, {precision}{replicas}); "
        "lower trainer.batch_size (or trainer.eval_batch_size if it failed while evaluating), "
        "or use trainer.precision=bf16 on a GPU that supports it"
        + (", or fuse fewer replicates into one model (e.g. trainer.fuse_max=4 trains K in passes of 4)." if fused
           else ", or train fewer replicates at once (lower replicates)." if replicas else "."))


def finalize(plan: Plan, rec: RunRecorder, tested: Tested, cfg: DictConfig | None = None,
             out_dir: Path | None = None, run_name: str | None = None, started: float | None = None) -> dict[str, float]:
    """The run's final metrics, best checkpoint and figures (a replicate's, given its own
    ``cfg``, ``out_dir`` and ``run_name``)."""
    cfg, out_dir, result = cfg or plan.cfg, out_dir or plan.out_dir, tested.result
    final = {
        "best_val_acc": result.best_val_acc,
        "best_val_loss": result.best_val_loss,
        "train_acc_at_best": result.train_acc_at_best,
        "test_acc": tested.test_acc,
        "test_loss": tested.test_loss,
        "n_params": float(plan.n_params),
        "epochs_run": float(result.epochs_run),
        "best_epoch": float(result.best_epoch),
        "wall_time_s": time.perf_counter() - (started or plan.started),
    }
    rec.log_metrics(final, tags={TAG_STATE: COMPLETE})
    best_path = out_dir / checkpoint.BEST
    torch.save(tested.best_state, best_path)
    if cfg.tracking.get("log_model"):
        rec.log_artifacts(best_path, "checkpoints")
    if rec.enabled and cfg.tracking.get("log_figures", True):
        history, labels, preds = list(result.history), tested.test_labels, tested.test_preds
        name, classes = run_name or plan.run_name, cfg.dataset.get("classes")
        n_classes = int(cfg.dataset.num_classes)

        def draw() -> None:
            from sweeps.plots import run_figures

            rec.log_artifacts(run_figures(history, labels, preds, n_classes, out_dir / "figures", name,
                                          class_names=classes), "figures")  # the run may have ended: that is fine

        figures_later(draw, rec.run_id, after_next_step=plan.in_sweep_process)
    return final


_figures_go = threading.Event()  # set: what is queued may be drawn now
_figures_lock = threading.Lock()
_figures_queue: list = []
_figures_worker: threading.Thread | None = None
FIGURES_WAIT_S = 30.0  # the longest a run's figures wait for the next trial's first step


def figures_later(draw, run_id: str, after_next_step: bool = False) -> None:
    """Draw and log a finished run's figures in a background thread (one: pyplot is not thread-safe).

    With ``after_next_step`` (a trial of an in-process sweep) the drawing starts once the next trial
    has taken its first step (:func:`release_figures`), the sweep ends (:func:`wait_for_figures`), the
    interpreter exits or FIGURES_WAIT_S have passed: pyplot is half a second of Python a trial, and
    drawn at once it would hold the interpreter's lock through the next trial's set-up; this way it
    overlaps that trial's training (on a GPU, for free). The thread is not a daemon, so the
    interpreter waits for the drawing at exit; a kill loses the PNGs not drawn yet, never a metric.
    """
    global _figures_worker
    if after_next_step:
        _figures_go.clear()
    else:
        _figures_go.set()

    def job() -> None:
        deadline = time.monotonic() + FIGURES_WAIT_S
        # The main thread stops being alive once the interpreter exits and joins this thread.
        while not _figures_go.wait(0.1) and threading.main_thread().is_alive() and time.monotonic() < deadline:
            pass
        try:
            draw()
        except Exception as e:  # noqa: BLE001 - figures are a view of what is recorded
            log.warning(f"could not draw or log the figures of MLflow run {run_id} ({type(e).__name__}: {e})")

    with _figures_lock:
        _figures_queue.append(job)
        if _figures_worker is None:
            _figures_worker = threading.Thread(target=_draw_queued, name="sweeps-figures")
            _figures_worker.start()


def _draw_queued() -> None:
    global _figures_worker
    while True:
        with _figures_lock:
            if not _figures_queue:
                _figures_worker = None  # under the lock: figures_later starts another for what comes next
                return
            job = _figures_queue.pop(0)
        job()


def release_figures() -> None:
    """Let the figures queued by :func:`figures_later` be drawn (a training's first step is done)."""
    _figures_go.set()


def wait_for_figures() -> None:
    """Until every figure handed to :func:`figures_later` is drawn and logged."""
    _figures_go.set()
    while (worker := _figures_worker) is not None:
        worker.join(0.05)  # in slices: a Ctrl-C meanwhile is raised between them


def train(cfg: DictConfig) -> dict[str, float]:
    plan = prepare(cfg)
    # Before the run opens: data that cannot be had (CIFAR offline, a damaged cache) records nothing.
    splits = load_splits(cfg.dataset)
    link = TrialLink.open(cfg)
    plan.in_sweep_process = link is not None and link.in_sweep_process
    keep = str(cfg.trainer.get("keep_checkpoints", "best"))

    def opened(rec: RunRecorder) -> None:
        if link is not None:
            link.record_run(rec.run_id)  # first of all: a reaper finds and closes this run
        run_dir.write(plan.out_dir, plan.identity, rec.run_id)
        if plan.resume_id is None:
            rec.log_params({"n_params": plan.n_params})
            log_config_artifacts(rec, plan.out_dir)

    # The run opens in the background once the first step is done (its first epoch's metrics wait
    # for it): MLflow's import and store would cost a single run seconds before that step.
    with RunRecorder(cfg, plan.run_name, plan.tags, resume_run_id=plan.resume_id, background=True,
                     on_open=opened) as rec, disk_full_is_one_paragraph(cfg, plan.out_dir):
        if plan.replicas:
            from sweeps import lockstep

            final = lockstep.train(plan, rec, link, splits)
        else:
            try:
                final = finalize(plan, rec, fit_and_test(plan, rec, link, splits))
            except Exception:  # pruned, diverged, failed: it will not resume (an interrupted run does, and keeps)
                checkpoint.retain(plan.out_dir, keep, finished=False)
                raise
            checkpoint.retain(plan.out_dir, keep, finished=True)
    log.info(done_line(plan, final, rec.run_id))
    return final


def done_line(plan: Plan, final: dict[str, float], run_id: str | None) -> str:
    epochs = int(round(final["epochs_run"]))

    def shown(name: str) -> str:
        if f"{name}_std" not in final:
            return f"{final[name]:.4f}"
        return f"{final[name]:.4f} ± {final[name + '_std']:.4f} (n={int(final[name + '_n'])})"

    head = f"done: {plan.n_params:,} params | "
    if len(plan.seeds) > 1:
        head += f"{len(plan.seeds)} replicates (seeds {', '.join(map(str, plan.seeds))}) | "
    return (head + f"{epochs} epoch{'s' if epochs != 1 else ''} (best {int(round(final['best_epoch']))}) | "
            f"best val acc {shown('best_val_acc')} | test acc {shown('test_acc')} | "
            f"{final['wall_time_s']:.1f}s" + (f" | MLflow run {run_id}" if run_id else ""))


def objective_value(cfg: DictConfig, final: dict[str, float]) -> float | list[float]:
    """What the sweeper sees: the objective's metric, over replicates its ``replicate_aggregate``."""
    how = str(cfg.get("replicate_aggregate", "mean"))
    names = list(cfg.objective) if isinstance(cfg.objective, ListConfig) else [str(cfg.objective)]
    values = [float(final.get(replicates.objective_key(n, how), final[n])) for n in names]
    return values if isinstance(cfg.objective, ListConfig) else values[0]
