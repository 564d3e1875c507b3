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
