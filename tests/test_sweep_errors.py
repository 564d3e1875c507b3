"""Bad sweep input ends before any trial runs, with one paragraph and exit status 2.

Every case runs in a copy of a project whose stores already hold a finished
sweep (``recorded_project``), asks for one more trial than the study has, and
checks that the Optuna storage and the MLflow store hold exactly what they held
before: no new trial or run, nothing left RUNNING, no state or value changed.
"""

from __future__ import annotations

import pytest

from conftest import GOOD_LR, RECORDED, TINY, nothing_running, run_module, stores
from sweeps_optuna.search_space import search_space_from_overrides

MORE = ["hydra.sweeper.n_trials=2"]  # one more than recorded: only the refusal keeps it from running
# The recorded study by name, in its storage: a study the user chose is refused when another sweep made it.
CHOSEN = ["hydra.sweeper.study_name=train", "hydra.sweeper.storage=sqlite:///{root}/multirun/optuna.db"]
CASES = {
    "inverted-interval": (["optim.lr=interval(0.1,0.001)"],
                          ["search space cannot be built", "optim.lr=interval(0.1,0.001) is inverted",
                           "low=0.1, high=0.001", "low < high"]),
    "empty-interval": (["optim.lr=interval(0.1,0.1)"],
                       ["search space cannot be built", "optim.lr=interval(0.1,0.1) is an empty interval",
                        "low=0.1, high=0.1", "fix the value with optim.lr=0.1"]),
    "infeasible": (["budget.max_params=100", "optim.lr=choice(0.1,0.01)"],
                   ["No point of the search space fits the parameter budget budget.max_params=100",
                    "Nothing was launched"]),
    "storage": ([GOOD_LR, "hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x"],
                ["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x cannot be opened",
                 "hydra.sweeper.storage=null"]),
    "tracking-uri": ([GOOD_LR, "tracking.uri=http://127.0.0.1:9"],
                     ["tracking.uri=http://127.0.0.1:9 cannot be reached", "tracking.uri=null"]),
    "other-directions": ([GOOD_LR, "hydra.sweeper.direction=minimize", *CHOSEN],
                         ["Study 'train'", "optimizes ['maximize'], but this sweep asks for ['minimize']",
                          "hydra.sweeper.study_name"]),
    "another-sweep": (["model.stem_channels=choice(4,8)", "trainer.epochs=2", *CHOSEN],
                      ["Study 'train'", "was made by another sweep (trainer.epochs=1 there, trainer.epochs=2 here; "
                       "model.stem_channels searched here only; optim.lr searched there only)",
                       "its 1 trial(s) would be mixed", "hydra.sweeper.study_name=<new name>",
                       "hydra.sweeper.allow_study_changes=true"]),
    "no-trials": ([GOOD_LR, "hydra.sweeper.n_trials=0"],
                  ["hydra.sweeper.n_trials=0 must be a whole number >= 1", "hydra.sweeper.n_trials=20"]),
    "negative-jobs": ([GOOD_LR, "hydra.sweeper.n_jobs=-1"],
                      ["hydra.sweeper.n_jobs=-1 must be a whole number >= 1"]),
    "sweep-dir-under-a-file": ([GOOD_LR, "hydra.sweep.dir={root}/a_file/sweep"],
                               ["the sweep's output directory {root}/a_file/sweep (hydra.sweep.dir) cannot be "
                                "created: {root}/a_file is a regular file", "point hydra.sweep.dir to"]),
    "disk-full": ([GOOD_LR, "paths.min_free_mb=100000000"],
                  ["the sweep's output directory", "is on a disk with only", "MB free",
                   "less than paths.min_free_mb=100000000", "free some space there"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_input_errors(recorded_project, case):
    root, before = recorded_project
    (root / "a_file").write_text("a regular file, not a directory\n")
    args, expected = ([a.format(root=root) for a in x] for x in CASES[case])
    proc = run_module("sweeps.train", RECORDED + MORE + args, root, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in expected:
        assert fragment in out, out[-3000:]
    assert stores(root) == before, "a refused sweep changed the Optuna storage or the MLflow store"
    nothing_running(root)


def test_a_default_named_study_of_another_sweep_gets_a_derived_name_found_again(recorded_project):
    """The stock plugin keeps a default study in memory; ours persists it. A different command
    under the default name and storage gets study 'train-2' instead of a refusal (or a mix), and
    re-running it resumes 'train-2': the recorded study 'train' is untouched both times."""
    import optuna

    root, before = recorded_project
    args = RECORDED + ["hydra.sweeper.n_trials=1", "trainer.epochs=2"]
    storage = f"sqlite:///{root}/multirun/optuna.db"
    for attempt in (1, 2):
        proc = run_module("sweeps.train", args, root, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        assert names == ["train", "train-2"], (attempt, names, out[-2000:])
        derived = optuna.load_study(study_name="train-2", storage=storage).get_trials()
        assert [t.state.name for t in derived] == ["COMPLETE"], (attempt, derived)
        assert stores(root)["studies"]["train"] == before["studies"]["train"]
    assert "found again" in out and "Sweep 'train-2': 1/1 trials" in out, out[-3000:]
    nothing_running(root)


@pytest.mark.parametrize("override,expected", [
    ("seed=tag(int, interval(3,3))", "seed=tag(int, interval(3,3)) is an empty interval (low=3, high=3)"),
    ("trainer.epochs=interval(2,2)", "fix the value with trainer.epochs=2"),
    ("seed=range(3,1)", "seed=range(3,1) lists no value"),
    ("seed=shuffle(range(3,3))", "seed=shuffle(range(3,3)) lists no value"),
    ("seed=tag(int, interval(1.5,4))", "needs whole-number bounds"),
    ("optim.lr=tag(log, interval(0,1))", "optim.lr=tag(log, interval(0,1)): low > 0 must hold"),
])
def test_search_parameters_that_hold_no_range_are_refused(override, expected):
    """In process (the sweep command turns the ValueError into the refusal above)."""
    with pytest.raises(ValueError) as e:
        search_space_from_overrides([override])
    assert expected in str(e.value)


def test_int_interval_searches_integers():
    dists, _ = search_space_from_overrides(["seed=tag(int, interval(1,4))", "optim.lr=interval(1,4)"])
    assert (type(dists["seed"]).__name__, dists["seed"].low, dists["seed"].high) == ("IntDistribution", 1, 4)
    assert type(dists["optim.lr"]).__name__ == "FloatDistribution"


def test_unreachable_tracking_server_fails_fast(recorded_project):
    root, before = recorded_project
    proc = run_module("sweeps.train", [*TINY, "tracking.uri=http://127.0.0.1:9"], root, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tracking.uri=http://127.0.0.1:9 cannot be reached" in proc.stderr.strip().splitlines()[-1]
    assert stores(root) == before


@pytest.mark.parametrize("args,expected", [
    (["optim.lr=interval(0.001,0.1)"], ["optim.lr=interval(0.001,0.1) needs the Optuna sweeper",
                                        "hydra/sweeper=sweeps_optuna"]),
    (["hydra.sweeper.n_trials=3"], ["hydra.sweeper.n_trials=3 needs the Optuna sweeper"]),
    (["hparams_search=blocks", "hydra.sweeper.n_trails=3"],
     ["'hydra.sweeper.n_trails' is not a setting of the sweeps_optuna sweeper", "Did you mean 'hydra.sweeper.n_trials'"]),
], ids=["interval-without-our-sweeper", "sweeper-key-without-it", "misspelled-sweeper-key"])
def test_sweep_syntax_mistakes_are_named_before_hydra_runs(tmp_path, args, expected):
    proc = run_module("sweeps.train", ["--multirun", "dataset=digits", *args], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    for fragment in expected:
        assert fragment in last, last
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlruns").exists()


def test_trial_names_hold_what_differs_rounded_and_stay_unique():
    from sweeps_optuna.search_space import MAX_TRIAL_NAME, trial_name

    assert trial_name(3, {"optim.lr": 0.0012345678, "model.blocks": "[2,2]"}) == "lr=0.001235 blocks=[2,2] #3"
    # a table row: the option alone
    assert trial_name(0, {"+hparams_search/rows/optimizer": "adam_lr0.001_wd5e-4"}) == "adam_lr0.001_wd5e-4 #0"
    # two searched keys with the same last part keep their full names
    assert trial_name(1, {"optim.lr": 0.1, "schedule.lr": 0.2}) == "optim.lr=0.1 schedule.lr=0.2 #1"
    # values that round alike stay apart by the trial number; a long name is cut, the number kept
    assert trial_name(4, {"optim.lr": 0.0123401}) != trial_name(5, {"optim.lr": 0.0123402})
    long = trial_name(12, {f"model.key{i}": 0.123456 for i in range(20)})
    assert len(long) <= MAX_TRIAL_NAME + 4 and long.endswith("… #12"), long
    assert trial_name(7, {}) == "#7"
