"""Each trial's config composed once, for the parameter budget and for its launch alike.

Hydra composes a job's config inside the launcher (``load_sweep_config``), and
composing is most of what a sweep does between two short trials (a tenth of a
second or more for a small app). The budget check needs the same config before
launch; composing it twice doubled that. The sweeper hands its launcher this
wrapper of Hydra's config loader instead: a config composed for launch is kept
until the launcher asks for exactly those overrides of exactly that master
config, and is given to it then, once; any other request is Hydra's own.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from omegaconf import DictConfig


class ComposeOnce:
    """Hydra's config loader, keeping the one config composed last for the launch that follows."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._kept: Optional[Tuple[DictConfig, List[str], DictConfig]] = None

    def compose_for_launch(self, master_config: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """The job's config; the launcher's next request for the same overrides gets this one."""
        self._kept = None
        cfg = self._loader.load_sweep_config(master_config, list(overrides))
        self._kept = (master_config, list(overrides), cfg)
        return cfg

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: List[str]) -> DictConfig:
        kept, self._kept = self._kept, None  # given once: the launcher changes the config it gets
        if kept is not None and kept[0] is master_config and kept[1] == list(sweep_overrides):
            return kept[2]
        return self._loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # unpickling, before _loader exists
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __getstate__(self) -> dict:
        return {"_loader": self._loader, "_kept": None}  # a launcher pickled for a remote job carries no config

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
