"""What every ``python -m sweeps.*`` entrypoint does the same way.

* :func:`compose`: the config tree composed outside a Hydra run (summary, LR
  finder, the override check), with Hydra's own errors turned into ConfigError;
* :func:`user_errors`: a user error ends the command with one paragraph on
  stderr (``error: ...``) and its exit status (2: a bad input; 1: a run that did
  not fit in memory), never a traceback;
* SIGTERM (a cluster's preemption) is Ctrl-C: :class:`Interrupted` from the
  sweeper's contract, so a job and its sweep process stop the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from sweeps_optuna.contract import Interrupted, UserError
from sweeps_optuna.storage import redact
from sweeps.errors import ConfigError
from sweeps.paths import CONF_DIR

__all__ = ["Interrupted", "compose", "config_dirs", "fail", "print_error", "use_config_dirs", "user_errors"]

# Config dirs of the command line (Hydra's --config-dir), searched after conf/.
_extra_dirs: list[str] = []


def use_config_dirs(dirs: list[str]) -> None:
    _extra_dirs[:] = [str(Path(d).resolve()) for d in dirs]


def config_dirs() -> list[Path]:
    """conf/, then the command line's --config-dir, as Hydra searches them for a group's options."""
    return [Path(CONF_DIR), *(Path(d) for d in _extra_dirs)]


def compose(overrides: list[str], config_name: str = "train", with_hydra: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``overrides``, as ``python -m sweeps.train`` would compose it."""
    if _extra_dirs:
        overrides = [*overrides, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in _extra_dirs) + "]"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            return hydra_compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
        except HydraException as e:
            raise ConfigError(str(e)) from None


def print_error(message: str) -> None:
    """The one paragraph a user reads when a command cannot do what was asked (passwords masked)."""
    print(f"error: {redact(message)}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 2) -> NoReturn:
    print_error(message)
    sys.exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """End the command with the paragraph of any user error raised inside."""
    try:
        yield
    except UserError as e:
        fail(str(e), getattr(e, "exit_code", 2))
