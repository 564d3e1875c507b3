"""Replicates: a config trained with K seeds, each its own run, the config's run holding the statistics.

Through the real path: ``python -m sweeps.train`` subprocesses on digits, the
project's MLflow store and the sweep's Optuna storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import SWEEP, TINY, mlflow_runs, run_module, stores

QUIET = ["tracking.log_figures=false", "tracking.log_model=false"]


def family(root: Path) -> tuple[dict, dict]:
    """({config run id: run}, {config run id: [its replicate runs by index]})."""
    runs = mlflow_runs(root)
    children: dict[str, list] = {}
    for r in runs:
        if "sweeps.replicate" in r.data.tags:
            children.setdefault(r.data.tags["sweeps.replicate_of"], []).append(r)
    configs = {r.info.run_id: r for r in runs if "sweeps.replicates" in r.data.tags}
    return configs, {k: sorted(v, key=lambda r: int(r.data.tags["sweeps.replicate"])) for k, v in children.items()}


def assert_aggregates(config, replicas) -> None:
    """The config run's statistics are numpy's and scipy's over its replicates' own metrics."""
    for name in ("best_val_acc", "test_acc", "best_val_loss"):
        xs = np.array([r.data.metrics[name] for r in replicas])
        m = config.data.metrics
        sem = xs.std(ddof=1) / np.sqrt(len(xs))
        half = stats.t.ppf(0.975, len(xs) - 1) * sem
        assert m[name] == pytest.approx(xs.mean()) and m[f"{name}_mean"] == pytest.approx(xs.mean())
        assert m[f"{name}_std"] == pytest.approx(xs.std(ddof=1)) and m[f"{name}_sem"] == pytest.approx(sem)
        assert m[f"{name}_n"] == len(xs)
        assert (m[f"{name}_ci95_low"], m[f"{name}_ci95_high"]) == pytest.approx((xs.mean() - half, xs.mean() + half))


def test_a_sweep_of_replicated_configs_optimizes_the_chosen_aggregate(project: Path):
    """3 trials x 3 replicates: 3 child runs per trial run, its statistics over them, and the
    Optuna value of each trial the median of its replicates' best_val_acc."""
    r = run_module("sweeps.train", [*SWEEP, *QUIET, "hydra.sweeper.n_trials=3", "optim.lr=interval(0.001,0.1)",
                                    "replicates=3", "replicate_aggregate=median"], project)
    assert r.returncode == 0, r.stderr[-3000:]
    configs, children = family(project)
    assert len(configs) == 3
    (study_name, (_, trials)), = stores(project)["studies"].items()
    by_trial = {int(run.data.tags["sweeps.trial"]): run for run in configs.values()}
    for number, state, values, _, _ in trials:
        config = by_trial[number]
        replicas = children[config.info.run_id]
        assert state == "COMPLETE" and [int(x.data.tags["sweeps.replicate_seed"]) for x in replicas] == [0, 1, 2]
        assert all(x.info.status == "FINISHED" and x.data.tags["mlflow.parentRunId"] == config.info.run_id
                   for x in replicas)
        assert_aggregates(config, replicas)
        assert values == [pytest.approx(float(np.median([x.data.metrics["best_val_acc"] for x in replicas])))]
        assert config.data.metrics["best_val_acc_median"] == pytest.approx(values[0])


def test_a_replicate_trains_exactly_as_its_seed_alone(project: Path):
    """Replicates step in turn, each with its own random stream: replicate 1 (seed 1) is the run
    `seed=1` would be, to the last digit, and the single run prints mean ± std."""
    r = run_module("sweeps.train", [*TINY, *QUIET, "replicates=2"], project)
    assert r.returncode == 0, r.stderr[-3000:]
    done = next(line for line in r.stdout.splitlines() if "done:" in line)
    assert "2 replicates (seeds 0, 1)" in done and "best val acc" in done and " ± " in done and "(n=2)" in done
    alone = run_module("sweeps.train", [*TINY, *QUIET, "seed=1"], project)
    assert alone.returncode == 0, alone.stderr[-3000:]
    configs, children = family(project)
    (config_id, config), = configs.items()
    solo = next(x for x in mlflow_runs(project) if x.info.run_id not in configs and "sweeps.replicate" not in x.data.tags)
    replica = children[config_id][1]
    for name in ("best_val_acc", "test_acc", "test_loss", "best_val_loss"):
        assert replica.data.metrics[name] == solo.data.metrics[name], name
    assert_aggregates(config, children[config_id])


KILL_AFTER_FIRST = textwrap.dedent('''
    import os, signal
    from sweeps import lockstep

    finish = lockstep._finish

    def _finish(*args, **kwargs):
        finish(*args, **kwargs)
        if not os.path.exists(os.environ["SWEEPS_TEST_ONCE"]):
            open(os.environ["SWEEPS_TEST_ONCE"], "w").close()
            os.kill(os.getpid(), signal.SIGTERM)

    lockstep._finish = _finish
''')


def killed_after_first_replicate(project: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m sweeps.train args``, SIGTERMed by its own sitecustomize right after its first replicate finished."""
    hook = project / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AFTER_FIRST)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEPS_OPTUNA_STORAGE")}
    env.update(PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]), SWEEPS_TEST_ONCE=str(project / "once"))
    killed = subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 130, killed.stderr[-3000:]
    return killed


def test_an_interrupted_config_resumes_only_its_unfinished_replicates(project: Path):
    """SIGTERM right after replicate 0 finished; `trainer.resume=true` in the same directory finishes
    replicates 1 and 2 from their last.pt and leaves replicate 0's run as it was."""
    out = project / "run"
    args = [*TINY, *QUIET, "replicates=3", f"hydra.run.dir={out}"]
    killed = killed_after_first_replicate(project, args)
    configs, children = family(project)
    (config_id, config), = configs.items()
    assert config.info.status == "KILLED"
    before = {x.info.run_id: (x.info.status, x.info.end_time, dict(x.data.metrics)) for x in children[config_id]}
    first = children[config_id][0]
    assert [x.info.status for x in children[config_id]] == ["FINISHED", "KILLED", "KILLED"]
    assert (out / "replicate_1" / "last.pt").is_file() and not (out / "replicate_0" / "last.pt").exists()

    resumed = run_module("sweeps.train", [*args, "trainer.resume=true"], project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "seed 0: finished before" in resumed.stdout
    assert "epoch 1:" in killed.stdout and "epoch" not in resumed.stdout.replace("epochs", "")  # nothing left to train
    configs, children = family(project)
    assert list(configs) == [config_id] and configs[config_id].info.status == "FINISHED"
    after = children[config_id]
    assert [x.info.run_id for x in after] == list(before)  # the same three runs, none new
    assert (after[0].info.status, after[0].info.end_time, dict(after[0].data.metrics)) == before[first.info.run_id]
    assert [x.info.status for x in after] == ["FINISHED"] * 3
    assert_aggregates(configs[config_id], after)


def test_a_sweep_re_running_an_interrupted_trial_adopts_its_finished_replicates(project: Path):
    """A sweep SIGTERMed right after trial 0's first replicate finished; the same command again runs
    the re-queued trial, which takes that replicate's run as it is and trains the other two."""
    args = [*SWEEP, *QUIET, "hydra/sweeper/sampler=grid", "optim.lr=choice(0.01)", "replicates=3"]
    killed_after_first_replicate(project, args)
    configs, children = family(project)
    (old_id, _), = configs.items()
    first = children[old_id][0]
    assert first.info.status == "FINISHED"

    again = run_module("sweeps.train", args, project)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed 0: adopted from interrupted MLflow run" in again.stdout + again.stderr
    (_, (_, trials)), = stores(project)["studies"].items()
    assert sorted(t[1] for t in trials) == ["COMPLETE", "FAIL"]  # the interrupted one, not counted, and its re-run
    configs, children = family(project)
    new_id = next(k for k, c in configs.items() if c.data.tags["sweeps.state"] == "COMPLETE")
    replicas = children[new_id]
    assert [x.data.tags["sweeps.replicate_seed"] for x in replicas] == ["0", "1", "2"]
    assert replicas[0].info.run_id == first.info.run_id and replicas[0].data.metrics == first.data.metrics
    assert replicas[0].info.end_time == first.info.end_time  # not reopened
    assert_aggregates(configs[new_id], replicas)


def test_a_pruned_config_stops_every_replicate_at_the_same_epoch(project: Path):
    """The pruner sees the replicates' mean at each epoch; pruning stops them all there."""
    args = [a for a in SWEEP if not a.startswith("trainer.epochs")] + [
        *QUIET, "trainer.epochs=4", "replicates=2", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0",
        "optim.lr=choice(0.03,0.0000001)"]
    r = run_module("sweeps.train", args, project)
    assert r.returncode == 0, r.stderr[-3000:]
    (_, (_, trials)), = stores(project)["studies"].items()
    assert sorted(t[1] for t in trials) == ["COMPLETE", "PRUNED"], trials
    configs, children = family(project)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    pruned = next(c for c in configs.values() if c.data.tags["sweeps.state"] == "PRUNED")
    replicas = children[pruned.info.run_id]
    assert len(replicas) == 2 and all(x.data.tags["sweeps.state"] == "PRUNED" for x in replicas)
    epochs = {len(client.get_metric_history(x.info.run_id, "val_acc")) for x in replicas}
    assert len(epochs) == 1 and epochs.pop() < 4  # stopped together, before the last epoch


BAD = [
    ("replicates=0", "replicates=0 must be at least 1"),
    ("replicates=1.5", "replicates=1.5 is not an integer"),
    ("replicates=three", "replicates='three' is not an integer"),
    ("replicate_seeds=[3,3,4]", "repeats seed(s) [3]"),
    ("replicate_seeds=[0,1] replicates=3", "replicates=3 but replicate_seeds=[0, 1] has 2 seeds"),
    ("replicate_aggregate=max", "replicate_aggregate='max' is not one of mean, median, worst, mean_minus_std"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[o for o, _ in BAD])
def test_bad_replicate_settings_are_refused(composer, override, message):
    from sweeps.config import validate
    from sweeps.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        validate(composer(["dataset=digits", *override.split()]))
    assert message in str(e.value), str(e.value)


def test_a_bad_replicate_count_exits_2_before_anything_is_recorded(project: Path):
    r = run_module("sweeps.train", [*TINY, "replicates=-1"], project)
    assert r.returncode == 2 and "replicates=-1 must be at least 1" in r.stderr, r.stderr[-2000:]
    assert not (project / "mlruns").exists() and not (project / "data").exists()
    lr = run_module("sweeps.lr_find", [*TINY, "replicates=3"], project)
    assert lr.returncode == 2 and "learning-rate range test runs one seed" in lr.stderr, lr.stderr[-2000:]


def test_replicate_statistics_are_scipys():
    from sweeps import replicates

    xs = [0.91, 0.93, 0.925, 0.918]
    s = replicates.summarize(xs)
    assert s["std"] == pytest.approx(np.std(xs, ddof=1)) and s["n"] == 4
    low, high = stats.t.interval(0.95, 3, loc=np.mean(xs), scale=stats.sem(xs))
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((low, high))
    assert replicates.aggregate("best_val_acc", xs, "worst") == 0.91
    assert replicates.aggregate("test_loss", xs, "worst") == 0.93
    assert replicates.aggregate("best_val_acc", xs, "mean_minus_std") == pytest.approx(np.mean(xs) - np.std(xs, ddof=1))
    assert replicates.aggregate("best_val_acc", xs, "median") == pytest.approx(np.median(xs))


def test_the_report_of_a_replicated_sweep_marks_what_scipy_finds_different(project: Path):
    """A real replicated sweep, then its report: lr=1e-7 is marked significantly worse than the best
    row exactly where scipy's Welch test on the replicate runs' metrics says so, and two configs
    that train identically (they differ only in the evaluation batch size) are not marked different."""
    import re

    args = [*SWEEP, *QUIET, "hydra/sweeper/sampler=grid", "replicates=3", "trainer.epochs=3",
            "trainer.limit_train_batches=12", "optim.lr=choice(0.03,0.0000001)", "trainer.eval_batch_size=choice(512,256)"]
    r = run_module("sweeps.train", args, project)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep_dir = next(p.parent for p in (project / "multirun").rglob("optimization_results.yaml"))
    rep = run_module("sweeps.report", [str(sweep_dir)], project, timeout=240)
    assert rep.returncode == 0, rep.stderr[-3000:]
    md = (sweep_dir / "report.md").read_text()
    configs, children = family(project)
    seeds = {run_id: np.array([x.data.metrics["best_val_acc"] for x in children[run_id]]) for run_id in configs}
    best = max(seeds, key=lambda k: seeds[k].mean())
    rows = {line.split("|")[-2].strip().strip("`"): line for line in md.splitlines()
            if line.startswith("| ") and re.search(r"`[0-9a-f]{32}`", line)}
    assert set(rows) == set(configs) and all("(n=3)" in line for line in rows.values())
    for run_id, line in rows.items():
        lr = float(configs[run_id].data.params["optim.lr"])
        if run_id == best:
            continue
        p = stats.ttest_ind(seeds[run_id], seeds[best], equal_var=False).pvalue
        worse = "▼" in line.split("|")[-4]  # the Δ validation cell
        assert worse == (p < 0.05), (lr, p, line)
        if lr < 1e-6:
            assert worse, line
    twins = [k for k in configs if float(configs[k].data.params["optim.lr"]) == 0.03]
    assert len(twins) == 2 and np.allclose(seeds[twins[0]], seeds[twins[1]])
    assert all("▲" not in line for line in rows.values()) and all("▼" not in rows[k].split("|")[-4] for k in twins)


def test_fused_replicates_train_as_the_unfused_ones(project: Path):
    """trainer.fuse_replicates=true (on the CPU here; auto fuses on CUDA): one fused model, each
    replicate still its own run, tagged fused, with the unfused run's per-epoch losses (float
    reordering only) and a best.pt that loads into the plain model."""
    import mlflow
    import torch

    from sweeps.models import build_model

    base = [*TINY, *QUIET, "replicates=3", "trainer.epochs=3"]
    fused = run_module("sweeps.train", [*base, "trainer.fuse_replicates=true", "tracking.experiment=fused",
                                         f"hydra.run.dir={project / 'fused'}"], project)
    assert fused.returncode == 0, fused.stderr[-3000:]
    assert "3 replicates fused into 1 model(s)" in fused.stdout
    alone = run_module("sweeps.train", [*base, "trainer.fuse_replicates=false", "tracking.experiment=alone"], project)
    assert alone.returncode == 0, alone.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    by_exp = {}
    for r in mlflow_runs(project):
        if "sweeps.replicate" in r.data.tags:
            name = client.get_experiment(r.info.experiment_id).name
            by_exp.setdefault(name, {})[r.data.tags["sweeps.replicate_seed"]] = r
    assert sorted(by_exp["fused"]) == sorted(by_exp["alone"]) == ["0", "1", "2"]
    for seed, run in by_exp["fused"].items():
        assert run.data.tags.get("sweeps.fused") == "true" and "sweeps.fused" not in by_exp["alone"][seed].data.tags
        for metric in ("train_loss", "val_loss"):
            ours = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
            theirs = [m.value for m in client.get_metric_history(by_exp["alone"][seed].info.run_id, metric)]
            assert len(ours) == 3 and ours == pytest.approx(theirs, rel=1e-4, abs=1e-5), (seed, metric)
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(project / "fused" / ".hydra" / "config.yaml")
    plain = build_model(cfg)
    plain.load_state_dict(torch.load(project / "fused" / "replicate_1" / "best.pt", weights_only=True), strict=True)


def test_a_model_that_cannot_fuse_is_refused_when_fusing_is_required(project: Path):
    tiny = [a for a in TINY if not a.startswith("model.")]
    r = run_module("sweeps.train", [*tiny, "model=resnet18_modified", "budget.max_params=null", "replicates=2",
                                    "trainer.fuse_replicates=true"], project)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot train as one fused model" in r.stderr and "Normalize is not a layer that fuses" in r.stderr
    assert "trainer.fuse_replicates=auto" in r.stderr
    plateau = run_module("sweeps.train", [*TINY, "schedule=plateau", "replicates=2", "trainer.fuse_replicates=true"],
                         project)
    assert plateau.returncode == 2 and "ReduceLROnPlateau steps on each replicate's own" in plateau.stderr, \
        plateau.stderr[-2000:]
    assert not (project / "mlruns").exists()


@pytest.mark.gpu
def test_auto_falls_back_with_one_line_where_the_model_cannot_fuse(project: Path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tiny = [a for a in TINY if not a.startswith("model.")]
    r = run_module("sweeps.train", [*tiny, "model=resnet18_modified", "budget.max_params=null", "replicates=2",
                                    "trainer.device=cuda"], project)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "replicates trained one after another, not fused:" in r.stdout and "Normalize" in r.stdout
