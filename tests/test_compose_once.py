"""A trial's config is composed once: the budget check's config is the one its launch gets."""

from __future__ import annotations

import pickle

from omegaconf import OmegaConf

from sweeps_optuna.compose import ComposeOnce


class Loader:
    """Hydra's config loader as the launcher sees it: every request composes afresh."""

    def __init__(self):
        self.composed = []
        self.other = "read through"

    def load_sweep_config(self, master, overrides):
        self.composed.append(list(overrides))
        return OmegaConf.create({"overrides": list(overrides)})


def test_the_launch_gets_the_config_composed_for_it_once():
    loader, master = Loader(), OmegaConf.create({})
    once = ComposeOnce(loader)
    cfg = once.compose_for_launch(master, ("a=1", "trial.number=0"))
    assert once.load_sweep_config(master, ["a=1", "trial.number=0"]) is cfg
    assert loader.composed == [["a=1", "trial.number=0"]]
    again = once.load_sweep_config(master, ["a=1", "trial.number=0"])  # given once: composed afresh
    assert again is not cfg and len(loader.composed) == 2
    assert once.other == "read through"


def test_any_other_request_is_composed_by_hydra():
    loader, master = Loader(), OmegaConf.create({})
    once = ComposeOnce(loader)
    kept = once.compose_for_launch(master, ["a=1"])
    assert once.load_sweep_config(master, ["a=2"]) is not kept  # other overrides
    once.compose_for_launch(master, ["a=1"])
    assert once.load_sweep_config(OmegaConf.create({}), ["a=1"]) is not kept  # another master config
    once.compose_for_launch(master, ["a=1"])
    assert once.load_sweep_config(master, ["a=2"]).overrides == ["a=2"]
    assert once.load_sweep_config(master, ["a=1"]) is not kept  # a refused trial's config is not kept for later
    assert len(loader.composed) == 7


def test_a_launcher_pickled_for_a_remote_job_carries_no_config():
    once = ComposeOnce(Loader())
    once.compose_for_launch(OmegaConf.create({}), ["a=1"])
    copy = pickle.loads(pickle.dumps(once))
    assert copy._kept is None and copy.other == "read through"


# ---------------------------------------------------------------------- against Hydra's own composition

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: E402
from hydra._internal.utils import create_config_search_path  # noqa: E402
from hydra.core.plugins import Plugins  # noqa: E402
from hydra.core.utils import JobRuntime  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from hydra.types import RunMode  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"


class Counting:
    """Hydra's real loader, counting the compositions it makes."""

    def __init__(self, loader):
        self.loader, self.composed = loader, []

    def load_sweep_config(self, master, overrides):
        self.composed.append(list(overrides))
        return self.loader.load_sweep_config(master, overrides)

    def __getattr__(self, name):
        return getattr(self.loader, name)


@pytest.fixture(scope="module")
def train_app():
    """sweeps.train's config tree as a multirun's master config, with a hydra override of its own."""
    JobRuntime.instance().set("name", "train")
    Plugins.instance()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = loader.load_configuration("train", ["hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_trials=3", "hydra.job.config.override_dirname."
                                                 "exclude_keys=[seed]", "dataset=digits"], RunMode.MULTIRUN)
    return loader, master


def _same(a, b):
    assert OmegaConf.to_yaml(a) == OmegaConf.to_yaml(b)
    assert OmegaConf.to_yaml(a.hydra) == OmegaConf.to_yaml(b.hydra)  # the hydra node is not in to_yaml's root


TRIALS = [
    ["dataset=digits", "optim.lr=0.01", "optim.weight_decay=0.001"],
    ["dataset=digits", "optim.lr=0.02", "optim.weight_decay=0.003", "seed=4"],  # the first one's template
    ["model.shortcut=B", "model=resnet20", "optim=sgd", "optim.lr=0.5", "dataset=digits"],
    ["model.depth=32", "model=resnet20", "optim=sgd", "optim.lr=0.1", "dataset=digits", "+extra.note=a b"],
    ["dataset=digits", "++optim.lr=1e-3", "~trainer.tta_crop", "model.head=[]"],
    ["dataset=digits", "optim={lr: 0.3}"],  # a dict on a group's key is a value (Hydra's rule)
]


def test_a_config_from_a_template_is_the_one_hydra_composes(train_app):
    loader, master = train_app
    counting = Counting(loader)
    once = ComposeOnce(counting)
    for overrides in TRIALS:
        _same(once.compose_for_launch(master, overrides), loader.load_sweep_config(master, overrides))
        _same(once.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides))
    # one composition per distinct set of group choices: digits; resnet20 + sgd + digits (twice)
    assert counting.composed == [["dataset=digits"], ["model=resnet20", "optim=sgd", "dataset=digits"]]


def test_a_launcher_changing_its_config_leaves_the_template_as_it_was(train_app):
    loader, master = train_app
    once = ComposeOnce(loader)
    cfg = once.compose_for_launch(master, TRIALS[0])
    cfg.optim.lr = 123.0
    cfg.hydra.job.num = 7
    assert once.load_sweep_config(master, TRIALS[0]) is cfg  # the launch it was composed for
    _same(once.load_sweep_config(master, TRIALS[0]), loader.load_sweep_config(master, TRIALS[0]))


@pytest.mark.parametrize("bad", ["optim.nosuch=1", "+optim.lr=1", "~nosuch.key"])
def test_a_bad_value_override_fails_as_hydra_fails(train_app, bad):
    loader, master = train_app
    once = ComposeOnce(loader)
    once.compose_for_launch(master, ["dataset=digits"])  # a template exists for the trial's groups
    with pytest.raises(ConfigCompositionException) as hydra_error:
        loader.load_sweep_config(master, ["dataset=digits", bad])
    with pytest.raises(ConfigCompositionException) as ours:
        once.load_sweep_config(master, ["dataset=digits", bad])
    assert str(ours.value) == str(hydra_error.value)


def test_hydra_overrides_and_sweeps_take_hydras_whole_path(train_app):
    loader, master = train_app
    counting = Counting(loader)
    once = ComposeOnce(counting)
    for overrides in (["dataset=digits", "hydra.job.name=x"], ["dataset=digits", "hydra.job.name=y"]):
        _same(once.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides))
    with pytest.raises(ConfigCompositionException):
        once.load_sweep_config(master, ["optim.lr=1,2"])
    assert len(counting.composed) == 3, counting.composed


def _tree(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(tmp_path)))
    return loader, loader.load_configuration("config", [], RunMode.MULTIRUN)


def test_a_config_copying_environment_variables_reads_them_afresh_each_trial(tmp_path, monkeypatch):
    """Hydra fills hydra.job.env_set on every composition: a worker's CUDA_VISIBLE_DEVICES, set after
    the first configs were made, must reach the next ones."""
    loader, master = _tree(tmp_path, "x: 1\ncopy_list: []\nhydra:\n  job:\n    env_copy: ${copy_list}\n")
    once = ComposeOnce(loader)
    monkeypatch.setenv("SWEEPS_TEST_VAR", "1")
    for overrides in (["x=2"], ["copy_list=[SWEEPS_TEST_VAR]"], ["x=3", "copy_list=[SWEEPS_TEST_VAR]"]):
        _same(once.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides))
    monkeypatch.setenv("SWEEPS_TEST_VAR", "2")
    cfg = once.load_sweep_config(master, ["x=4", "copy_list=[SWEEPS_TEST_VAR]"])
    assert cfg.hydra.job.env_set.SWEEPS_TEST_VAR == "2"
    _same(cfg, loader.load_sweep_config(master, ["x=4", "copy_list=[SWEEPS_TEST_VAR]"]))


@pytest.mark.parametrize("override", ["++hydra={runtime: {version: v}}", "hydra={job: {config_name: zz}}",
                                      "++hydra={overrides: {task: [zz]}}"])
def test_a_bare_hydra_key_takes_hydras_whole_path(tmp_path, override):
    loader, master = _tree(tmp_path, "x: 1\n")
    once = ComposeOnce(loader)
    for overrides in (["x=2"], ["x=3", override]):
        _same(once.load_sweep_config(master, overrides), loader.load_sweep_config(master, overrides))
