"""Every option of every config group composes, in-process with Hydra's compose API."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from sweeps.config import validate
from sweeps.paths import CONF_DIR

GROUPS = ["dataset", "optim", "schedule", "augment", "trainer", "tracking", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONF_DIR) / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_validates(composer, group, option):
    cfg = composer([f"{group}={option}"])
    validate(cfg)
    # Everything but Hydra's own runtime paths resolves.
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.optim, resolve=True)
    OmegaConf.to_container(cfg.trainer, resolve=True)


def test_seed_axes_read_like_the_seeds(composer):
    cfg = composer(["model=resnet18_trunc"])
    for key in ("channels", "blocks", "kernel_sizes", "pool", "head", "dropout"):
        assert key in cfg.model, key
    assert list(cfg.model.channels) == [32, 64, 128, 256] and list(cfg.model.blocks) == [3, 4, 4, 3]


def test_augment_rows_match_the_main_seed(composer):
    rows = {name: composer([f"augment={name}"]).augment for name in
            ["none", "norm", "norm_crop", "norm_crop_flip", "norm_crop_flip_rotate"]}
    assert not rows["none"].normalize and rows["norm"].normalize
    assert rows["norm_crop"].crop.padding == 4 and not rows["norm_crop"].flip
    assert rows["norm_crop_flip"].flip == 0.5 and not rows["norm_crop_flip"].rotate
    assert rows["norm_crop_flip_rotate"].rotate == 5
    cifar = composer(["dataset=cifar10"]).dataset
    assert list(cifar.mean) == [0.4914, 0.4822, 0.4465] and list(cifar.std) == [0.2023, 0.1994, 0.2010]


def test_class_names_label_the_classes_or_are_refused(composer):
    from sweeps.errors import ConfigError

    cifar = composer(["dataset=cifar10"])
    assert len(cifar.dataset.classes) == cifar.dataset.num_classes and cifar.dataset.classes[0] == "airplane"
    with pytest.raises(ConfigError, match=r"dataset.classes has 2 names but dataset.num_classes=10"):
        validate(composer(["dataset=digits", "+dataset.classes=[zero,one]"]))


# The command line's path for these is tested once per kind in test_train.py (a subprocess each);
# their boundaries are checked here, in-process, on the same composed config and validate().
BOUNDARIES = [
    ("trainer.batch_size=0", "trainer.batch_size=0 must be a positive integer"),
    ("trainer.eval_batch_size=-1", "trainer.eval_batch_size=-1 must be a positive integer"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be positive"),
    ("dataset.val_fraction=0", "dataset.val_fraction=0.0 must lie strictly between 0 and 1"),
    ("dataset.val_fraction=1", "dataset.val_fraction=1.0 must lie strictly between 0 and 1"),
    ("model.dropout=-0.1", "model.dropout=-0.1 must lie in [0, 1)"),
    ("trainer.patience=0", "trainer.patience=0 must be >= 1"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must be >= 0"),
    ("trainer.monitor=val_los", "trainer.monitor='val_los' is not val_acc or val_loss"),
]


@pytest.mark.parametrize("override,message", BOUNDARIES, ids=[o for o, _ in BOUNDARIES])
def test_out_of_range_boundaries_are_refused(composer, override, message):
    from sweeps.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate(composer(["dataset=digits", override]))
    assert message in str(e.value), str(e.value)


def test_the_kept_epoch_follows_trainer_monitor():
    """best.pt (and so the test accuracy and early stopping) follow trainer.monitor: accuracy up, loss down."""
    from sweeps.engine import FitResult, improves

    best = FitResult(best_epoch=1, best_val_acc=0.5, best_val_loss=1.0)
    assert improves("val_acc", 0.6, 1.2, best) and not improves("val_loss", 0.6, 1.2, best)
    assert improves("val_loss", 0.4, 0.8, best) and not improves("val_acc", 0.4, 0.8, best)
    assert improves("val_loss", 0.0, 9.0, FitResult())  # the first epoch is always the best so far


SEARCHES = sorted(p.stem for p in (Path(CONF_DIR) / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("name", SEARCHES)
def test_every_sweep_config_is_a_multirun_of_our_sweeper_with_the_apps_hooks(composer, name):
    """The shared base (hparams_search/base/): `hparams_search=<name>` sweeps with or without --multirun,
    the study and experiment are named after it, and the direction follows the objective."""
    from hydra.types import RunMode

    from sweeps.sweep_hooks import SweepsHooks

    cfg = compose("train", overrides=[f"hparams_search={name}", "tracking.enabled=false"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert sweeper._target_.endswith("SweepsOptunaSweeper") and sweeper.hooks._target_ == "sweeps.sweep_hooks.SweepsHooks"
    assert sweeper.n_jobs == 1 and sweeper.max_failure_rate == 0.25 and sweeper.study_name is None
    assert cfg.tracking.experiment == name
    hooks = SweepsHooks()
    hooks.bind(cfg)
    expected = ["maximize", "minimize"] if name == "pareto" else ["maximize"]
    assert hooks.directions() == expected
    if "grid" in sweeper.sampler._target_.lower() and not name.startswith("demo"):  # `make demo`'s run offline
        assert cfg.hydra.runtime.choices.model == "trunc_l3_pool8"


def test_the_sweeps_parameter_count_builds_each_distinct_model_once(composer, monkeypatch):
    """Once per process: an in-process job's own budget check reuses the sweeper's count."""
    from sweeps import models
    from sweeps.sweep_hooks import SweepsHooks

    built = []
    build = models.build_model
    monkeypatch.setattr(models, "_sizes", {})
    monkeypatch.setattr(models, "build_model", lambda cfg, **kw: built.append(cfg) or build(cfg, **kw))
    real = lambda cfg: models.count_parameters(build(cfg, for_counting=True))  # noqa: E731
    hooks = SweepsHooks()
    tiny = ["dataset=digits", "model.channels=[8,16]", "model.blocks=[1,1]", "model.stem_channels=8", "model.head=[]"]
    first = hooks.count_params(composer(tiny + ["optim.lr=0.1"]))
    assert hooks.count_params(composer(tiny + ["optim.lr=0.01"])) == first and len(built) == 1  # same model
    wider = hooks.count_params(composer(tiny[:1] + ["model.channels=[8,32]"] + tiny[2:]))
    assert wider > first and len(built) == 2
    assert hooks.count_params(composer(tiny[1:] + ["dataset=cifar100"])) > first and len(built) == 3  # 100 classes
    assert [real(cfg) for cfg in built] == [first, wider, hooks.count_params(built[2])]
    assert models.model_size(composer(tiny + ["optim.lr=0.5"])) == first and len(built) == 3  # the job's check
