"""``python -m sweeps.train``: train, validate, test, record, return the objective.

The model is built and counted first, so a configuration over the parameter
budget is refused before any data is loaded or any compute is spent.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps.config import validate
from sweeps.data import load_splits
from sweeps.data.device_loader import build_pipeline, prepare_model, select_pipeline
from sweeps.engine import autocast_dtype, evaluate, fit, select_device, tta_views
from sweeps.errors import ConfigError
from sweeps.models import build_model, check_budget, count_parameters
from sweeps.paths import CONF_DIR
from sweeps.preflight import check_job
from sweeps.tracking import TAG_STATE, RunRecorder, log_config_artifacts, overrides_run_name
from sweeps.trial_link import pruning_callback

log = logging.getLogger("sweeps.train")


class OutOfMemory(RuntimeError):
    """The model and batch did not fit on the device (the trial fails; the sweep goes on)."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a plain RuntimeError.

    Both mean the same to a sweep: this batch size does not fit this model here.
    """
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error))


class Interrupted(KeyboardInterrupt):
    """SIGTERM (e.g. SLURM preemption), handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Interrupted(f"received signal {signum}")


def model_size(cfg: DictConfig) -> int:
    """Parameter count of ``cfg.model`` for ``cfg.dataset``, without allocating it."""
    return count_parameters(build_model(cfg, for_counting=True))


def train(cfg: DictConfig) -> dict[str, float]:
    validate(cfg)
    n_params = model_size(cfg)
    check_budget(n_params, cfg)
    started = time.perf_counter()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    # Before the MLflow run opens: a full disk or an unwritable store ends here, in one paragraph.
    check_job(cfg, out_dir, multirun=hc.mode == RunMode.MULTIRUN)
    tags = {}
    if cfg.trial.get("number") is not None:
        tags = {"sweeps.study": str(cfg.trial.study), "sweeps.trial": str(cfg.trial.number)}
    run_name = cfg.tracking.get("run_name") or overrides_run_name(list(hc.overrides.task))

    # A device or pipeline that cannot be had is a config error like the ones above: refused
    # before a run is recorded.
    device = select_device(str(cfg.trainer.device))
    pipeline = select_pipeline(cfg, device)
    id_file = out_dir / "mlflow_run_id"
    resume_id = id_file.read_text().strip() if cfg.trainer.resume and id_file.exists() else None

    with RunRecorder(cfg, run_name, tags, resume_run_id=resume_id) as rec:
        if rec.run_id:
            id_file.write_text(rec.run_id)
        if resume_id is None:
            rec.log_params({"n_params": n_params})
            log_config_artifacts(rec, out_dir)
        torch.manual_seed(int(cfg.seed))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # --- data pipeline (trainer.pipeline: sweeps.data.device_loader) ---
        splits = load_splits(cfg.dataset)
        model = prepare_model(build_model(cfg).to(device), cfg, device)
        t = cfg.trainer
        pipe = build_pipeline(cfg, splits, device, pipeline)
        loader, generator = pipe.train, pipe.generator
        # --- end data pipeline ---
        steps = len(loader) if t.limit_train_batches is None else min(len(loader), int(t.limit_train_batches))

        def train_batches(epoch):
            for step, batch in enumerate(loader):
                if step >= steps:
                    break
                yield batch

        def val_batches():
            return pipe.val_batches()

        prune = pruning_callback(cfg)

        def on_epoch_end(m, result):
            rec.log_metrics({k: v for k, v in vars(m).items() if k != "epoch"}, step=m.epoch)
            log.info(f"epoch {m.epoch}: train loss {m.train_loss:.4f} acc {m.train_acc:.4f} | "
                     f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f} | lr {m.lr:.3g} | {m.epoch_time:.1f}s")
            if prune is not None:
                prune(m, result)

        out_of_memory = False
        amp = autocast_dtype(str(t.precision), device)
        try:
            result, best_state = fit(cfg, model, train_batches, steps, val_batches, device, on_epoch_end,
                                     checkpoint_dir=out_dir, loader_generator=generator)
            model.load_state_dict(best_state)
            test_loss, test_acc, test_preds = evaluate(
                model, pipe.test_batches(),
                device, amp, tta_views(t), keep_preds=True)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            out_of_memory = True  # handled below, outside the except block, so its frames can be freed
        if out_of_memory:
            # Drop every reference to device memory before raising: in a sweep the
            # exception outlives this frame, and the next trial needs the memory.
            model = pipe = loader = generator = splits = None
            gc.collect()
            torch.cuda.empty_cache()
            model_name = OmegaConf.select(hc, "runtime.choices.model", default=None) or cfg.model.get("_target_")
            precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")
            raise OutOfMemory(
                f"out of {device.type.upper()} memory training model={model_name} ({n_params:,} parameters) at "
                f"trainer.batch_size={t.batch_size} (trainer.eval_batch_size={t.eval_batch_size}, {precision}); "
                "lower trainer.batch_size (or trainer.eval_batch_size if it failed while evaluating), "
                "or use trainer.precision=bf16 on a GPU that supports it."
            )
        final = {
            "best_val_acc": result.best_val_acc,
            "best_val_loss": result.best_val_loss,
            "train_acc_at_best": result.train_acc_at_best,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "n_params": float(n_params),
            "epochs_run": float(result.epochs_run),
            "best_epoch": float(result.best_epoch),
            "wall_time_s": time.perf_counter() - started,
        }
        rec.log_metrics(final)
        rec.set_tags({TAG_STATE: "COMPLETE"})
        best_path = out_dir / "best.pt"
        torch.save(best_state, best_path)
        if cfg.tracking.get("log_model"):
            rec.log_artifacts(best_path, "checkpoints")
        # --- figures (sweeps.plots): learning curves + test confusion matrix, as run artifacts ---
        if rec.enabled and cfg.tracking.get("log_figures", True):
            from sweeps.plots import run_figures

            rec.log_artifacts(run_figures(result.history, splits.test.labels, test_preds,
                                          int(cfg.dataset.num_classes), out_dir / "figures", run_name,
                                          class_names=cfg.dataset.get("classes")), "figures")
        # --- end figures ---
    log.info(
        f"done: {n_params:,} params | {result.epochs_run} epochs (best {result.best_epoch}) | "
        f"best val acc {result.best_val_acc:.4f} | test acc {test_acc:.4f} | "
        f"{final['wall_time_s']:.1f}s" + (f" | MLflow run {rec.run_id}" if rec.run_id else "")
    )
    return final


def objective_value(cfg: DictConfig, final: dict[str, float]) -> float | list[float]:
    if isinstance(cfg.objective, ListConfig):
        return [float(final[name]) for name in cfg.objective]
    return float(final[str(cfg.objective)])


def task(cfg: DictConfig) -> float | list[float]:
    """The Hydra task: train one config and return its objective.

    Kept undecorated under its own name so that launchers which pickle it
    (submitit) find it by reference as ``sweeps.train.task``.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        search = OmegaConf.select(hc, "runtime.choices.hparams_search", default=None)
        if search and not multirun:
            # Otherwise one ordinary training lands in the sweep's experiment, as if it were its result.
            raise ConfigError(f"hparams_search={search} is a sweep: run it with --multirun "
                              f"(python -m sweeps.train --multirun hparams_search={search} ...). Without it, "
                              "Hydra would train the base config once; nothing was trained or recorded.")
        return objective_value(cfg, train(cfg))
    except ConfigError as e:
        if multirun:
            raise  # the sweeper records the trial as failed (or refused) and goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OutOfMemory as e:
        if multirun:
            raise  # the trial fails with this reason; the next one gets the memory back
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        if multirun:
            raise
        print("interrupted: the run is recorded as KILLED in MLflow; re-run the same command "
              "with trainer.resume=true and hydra.run.dir=<its output dir> to continue it.", file=sys.stderr)
        sys.exit(130)


main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")(task)


def cli() -> None:
    """Check the overrides' names first, then hand over to Hydra."""
    from sweeps.overrides import check_or_exit

    check_or_exit()
    main()


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy: launchers that pickle
    # the task (submitit) must find it as sweeps.train.task in the job process.
    from sweeps.train import cli as _cli

    _cli()
