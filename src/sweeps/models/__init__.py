"""Model construction from the ``model`` config node.

Each model config names its class with ``_target_``; the dataset supplies the
number of classes, input channels and image size, so one model config serves
CIFAR-10, CIFAR-100 and digits alike.
"""

from __future__ import annotations

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from sweeps.errors import BudgetExceeded, ConfigError


def build_model(cfg: DictConfig, *, for_counting: bool = False) -> nn.Module:
    """Instantiate ``cfg.model`` for ``cfg.dataset``.

    ``for_counting`` builds on the meta device (no memory, no weights download),
    which is all the parameter budget and ``sweeps.summary`` need.
    """
    model_cfg = cfg.model
    if for_counting and "pretrained" in model_cfg:
        model_cfg = model_cfg.copy()
        with open_dict(model_cfg):
            model_cfg.pretrained = False
    kwargs = dict(
        num_classes=cfg.dataset.num_classes,
        in_channels=cfg.dataset.channels,
        image_size=cfg.dataset.image_size,
    )
    try:
        if for_counting:
            with torch.device("meta"):
                return instantiate(model_cfg, **kwargs)
        return instantiate(model_cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(
            f"could not build model '{model_cfg.get('_target_')}': {cause or e}. Check the "
            "model.* overrides against the keys in the chosen conf/model/*.yaml."
        ) from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_sizes: dict[tuple, int] = {}


def model_size(cfg: DictConfig) -> int:
    """Parameter count of ``cfg.model`` for ``cfg.dataset``, without allocating it: what the
    budget is checked against before any data is loaded (and by the sweeper before launch).

    Counted once per distinct model in a process: building even on the meta device takes tens
    of milliseconds, and an in-process sweep would count each trial's model twice (the sweeper,
    then the job), though a sweep of learning rates or augmentations trains one model throughout.
    """
    # What the count depends on: the model's node (its interpolations resolved) and the dataset's shape.
    key = (OmegaConf.to_yaml(cfg.model, resolve=True), cfg.dataset.num_classes, cfg.dataset.channels,
           cfg.dataset.image_size)
    if key not in _sizes:
        _sizes[key] = count_parameters(build_model(cfg, for_counting=True))
    return _sizes[key]


def check_budget(n_params: int, cfg: DictConfig) -> None:
    max_params = cfg.get("budget", {}).get("max_params")
    if max_params is not None and n_params > max_params:
        raise BudgetExceeded(n_params, int(max_params))
