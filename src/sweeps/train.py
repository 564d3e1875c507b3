"""``python -m sweeps.train``: train, validate, test, record, return the objective.

The entrypoint only: Hydra's main, the override check that runs before it, and
the task that turns a run's errors into one paragraph and an exit status. The
run itself is :mod:`sweeps.run`, imported when a run starts, so that a command
refused by a check (a typo, a bad value, a full disk) exits before torch loads.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeps.cli import Interrupted, user_errors
from sweeps.paths import CONF_DIR
from sweeps_optuna.storage import redact_logs


def task(cfg: DictConfig) -> float | list[float]:
    """The Hydra task: train one config and return its objective.

    Kept undecorated under its own name so that launchers which pickle it
    (submitit) find it by reference as ``sweeps.train.task``. In a sweep every
    error goes back to the sweeper, which records the trial and goes on; a single
    run ends with one paragraph and its exit status instead.
    """
    Interrupted.on_signals()
    redact_logs()  # Hydra set up this job's log handlers just now
    from sweeps.config import validate

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        validate(cfg)
        from sweeps.run import objective_value, train

        return objective_value(cfg, train(cfg))
    try:
        with user_errors():
            validate(cfg)
            from sweeps.run import objective_value, train

            return objective_value(cfg, train(cfg))
    except KeyboardInterrupt:
        Interrupted.clear()
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
