"""The train entrypoint through real subprocesses and a real MLflow store."""

from __future__ import annotations

import os
import textwrap

import pytest

from conftest import TINY, mlflow_runs, run_module


@pytest.mark.slow
def test_resnet18_trunc_trains_on_digits_and_is_recorded(project):
    """The headline command, capped to 4 batches of 32 an epoch: its whole 3 epochs took 130 s of the
    suite on 2 cores, all of it the model's arithmetic. That a model learns digits is the next test's."""
    proc = run_module("sweeps.train", ["dataset=digits", "model=resnet18_trunc", "optim=adamw", "trainer.epochs=3",
                                       "trainer.limit_train_batches=4", "trainer.batch_size=32",
                                       "trainer.progress=false"], project, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4,779,530 params" in proc.stdout + proc.stderr
    (run,) = mlflow_runs(project)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_params"] == "4779530"
    assert run.data.params["model.blocks"] == "[3, 4, 4, 3]"
    assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    for name in ("train_loss", "train_acc", "val_loss", "lr"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3
    train_acc = [m.value for m in client.get_metric_history(run.info.run_id, "train_acc")]
    assert train_acc[-1] > max(0.2, train_acc[0]), f"12 steps of AdamW move it off chance (0.1): {train_acc}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"hydra", "checkpoints"} <= artifacts
    assert (project / "mlruns" / "artifacts").is_dir(), "artifacts live under mlruns/, absolute"


def test_a_small_model_learns_digits(project):
    """Four whole epochs of a 7,666-parameter ResNet (about 10 s): its best checkpoint, tested, is far
    above chance (0.1; 0.78 on this machine)."""
    tiny = [a for a in TINY if not a.startswith(("trainer.limit_", "trainer.epochs", "trainer.batch_size"))]
    proc = run_module("sweeps.train", [*tiny, "trainer.epochs=4", "optim.lr=0.01"], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(project)
    assert run.data.metrics["test_acc"] > 0.5, run.data.metrics


# Writes when each backward and each MLflow create_run happened (time.time(), one line each).
CLOCK = textwrap.dedent('''
    import os, time
    import mlflow, torch

    out = open(os.environ["SWEEPS_TEST_CLOCK"], "a", buffering=1)

    def clocked(owner, name, what):
        original = getattr(owner, name)
        def call(*args, **kwargs):
            out.write(f"{what} {time.time():.6f}\\n")
            return original(*args, **kwargs)
        setattr(owner, name, call)

    clocked(torch.Tensor, "backward", "step")
    clocked(mlflow.MlflowClient, "create_run", "create_run")
''')


def test_tiny_run_returns_objective_and_summary(project):
    """Also: the run's record opens after its first step (MLflow's import and store would delay that
    step by seconds), and the run's start time is still the training's."""
    hook = project / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CLOCK)
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "SWEEPS_TEST_CLOCK": str(project / "clock.txt")}
    proc = run_module("sweeps.train", TINY + ["tracking.experiment=tiny"], project, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [line.split() for line in (project / "clock.txt").read_text().splitlines()]
    steps = [float(t) for what, t in events if what == "step"]
    (created,) = [float(t) for what, t in events if what == "create_run"]
    assert len(steps) == 6 and steps[0] < created, events  # 2 epochs of 3 steps; opened after the first
    out = proc.stdout + proc.stderr
    assert "best val acc" in out and "test acc" in out
    (run,) = mlflow_runs(project, "tiny")
    assert run.info.status == "FINISHED"
    assert run.info.start_time / 1000 < steps[0]
    assert run.data.tags["sweeps.state"] == "COMPLETE"
    assert run.info.run_name.startswith("dataset=digits,model.channels=[8,16]")
    assert list((project / "outputs").glob("*/*/best.pt")), "best checkpoint kept in the run dir"
    assert not list((project / "outputs").glob("*/*/last.pt")), "a finished run drops its resume checkpoint"


def test_summary_prints_exact_count_last():
    proc = run_module("sweeps.summary", ["model=resnet18_trunc"], cwd=None)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "params: 4779530"
    assert lines[-2].startswith("budget: fits")
    assert any("layers.0.0.conv1" in line and "Conv2d" in line for line in lines)


BAD_INPUTS = [
    (["model=resnet19"], ["model=resnet19", "resnet18_trunc"]),
    (["optim=adamW"], ["optim=adamW", "Did you mean 'adamw'"]),
    (["trainer.epoch=3"], ["trainer.epoch", "Did you mean 'trainer.epochs'"]),
    (["trainer.epochs=ten"], ["trainer.epochs='ten'", "integer"]),
    (["trainer.epochs=0"], ["trainer.epochs=0", "at least 1"]),
    (["optim.lr=0"], ["optim.lr=0", "positive"]),
    (["dataset.val_fraction=1.5"], ["dataset.val_fraction=1.5", "between 0 and 1"]),
    (["model.dropout=1.0"], ["model.dropout=1.0", "[0, 1)"]),
    (["budget.max_params=100000"], ["4,779,530 parameters", "budget.max_params=4779530", "null"]),
    (["model.channels=[32,64]", "model.blocks=[1,1,1]"], ["model.blocks", "model.channels"]),
    (["model.kernel_sizes=4"], ["kernel", "4", "odd"]),
    (["model.pool=16"], ["model.pool=16", "between 1 and 4"]),
    (["optim=adam", "optim.momentum=0.9"], ["'optim.momentum' is not a key of optim=adam", "a key of optim=sgd"]),
    (["trainer.device=gpu"], ["trainer.device='gpu' is not a device", "auto, cpu, cuda or cuda:N"]),
    (["model.channels=64"], ["model.channels=64 is one number", "model.channels=[64,128]"]),
    (["augment=norm_crop_flip", "augment.crop.padding=-2"], ["augment.crop.padding=-2 must be >= 0"]),
    (["dataset.num_classes=5"], ["dataset.num_classes=5 but digits has 10 classes", "dataset.num_classes=10"]),
    (["optim=sgd", "optim.nesterov=true", "optim.momentum=0"],
     ["optim.nesterov=true needs momentum", "optim.momentum=0.0 must be > 0", "optim.nesterov=false"]),
    (["trainer.precision=fp8"], ["trainer.precision='fp8' is not one of auto, fp32, bf16, fp16"]),
    (["trainer.keep_checkpoints=last"], ["trainer.keep_checkpoints='last' is not one of best, all, none"]),
]


def test_a_sweep_config_is_a_sweep_without_multirun(project):
    """hparams_search configs set hydra.mode=MULTIRUN: without --multirun they sweep (they used to
    train the base config once, into the sweep's experiment, where it read as the sweep's result)."""
    import optuna

    proc = run_module("sweeps.train", ["hparams_search=augment", *TINY, "hydra.sweeper.n_trials=1",
                                       "tracking.log_model=false", "tracking.log_figures=false"], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="augment", storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    runs = mlflow_runs(project, "augment")
    assert sorted(r.data.tags.get("sweeps.role", "trial") for r in runs) == ["parent", "trial"]


@pytest.mark.parametrize("args,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_paragraph(project, args, expected):
    proc = run_module("sweeps.train", ["dataset=digits", *args], project)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for fragment in expected:
        assert fragment in message, message
    assert mlflow_runs(project) == [], "a refused config records no run (a typo does not fill an experiment)"


def test_path_keys_pass_the_name_check():
    """paths.* interpolate ${hydra:runtime.cwd}, which cannot resolve before Hydra runs: checking
    their names must not resolve them (it ended in a traceback)."""
    from sweeps.errors import ConfigError
    from sweeps.overrides import check

    check(["paths.mlruns=/tmp/elsewhere/mlruns", "paths.data=/tmp/elsewhere/data"])
    with pytest.raises(ConfigError, match="Did you mean 'paths.mlruns'"):
        check(["paths.mlrun=/tmp/elsewhere"])


def test_flags_with_values_and_overrides_on_both_sides(project):
    """`--cfg job` (the command our key errors recommend) is a flag and its value, not an override;
    overrides may stand on both sides of it."""
    from sweeps.overrides import split_argv

    assert split_argv(["a=1", "--multirun", "b=2", "--cfg", "job", "-cn", "train", "c=3"]) == (
        ["--multirun", "--cfg", "job", "-cn", "train"], ["a=1", "b=2", "c=3"])
    proc = run_module("sweeps.train", ["dataset=digits", "--cfg", "job", "trainer.epochs=7"], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = __import__("yaml").safe_load(proc.stdout)
    assert job["dataset"]["name"] == "digits" and job["trainer"]["epochs"] == 7
    proc = run_module("sweeps.train", ["--cfg", "job", "trainer.epoch=3"], project)
    assert proc.returncode == 2 and "Did you mean 'trainer.epochs'" in proc.stderr, proc.stderr[-3000:]
    assert not (project / "mlruns").exists() and not (project / "outputs").exists()


def test_a_typo_in_the_users_own_experiment_file_names_the_file_and_the_close_match(project):
    mine = project / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /optim: adamW\n")
    proc = run_module("sweeps.train", ["--config-dir", str(project / "my_configs"), "experiment=mine", *TINY], project)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{mine / 'mine.yaml'} (chosen by experiment=mine) selects optim: adamW" in message, message
    assert "Did you mean 'adamw'?" in message and "Fix that line of mine.yaml" in message, message
    assert not (project / "mlruns").exists()


def test_cifar10_without_data_or_network_names_path_and_digits(project):
    proc = run_module("sweeps.train", TINY + ["dataset=cifar10"], project, timeout=200)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert str(project / "data") in message and "dataset=digits" in message
    assert not mlflow_runs(project), "data that cannot be had is a user error: nothing is recorded"


def test_multiscale_tencrop_evaluation(project):
    """001's multi-scale 10-crop test, on a model with global pooling."""
    base = ["dataset=digits", "model=resnet_cifar", "model.depth=8", "trainer.epochs=1", "trainer.batch_size=64",
            "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1", "trainer.progress=false",
            "tracking.experiment=tta", "trainer.tta_scales=[32,40]", "trainer.tta_flip=true"]
    proc = run_module("sweeps.train", base, project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(project, "tta")
    assert run.data.params["trainer.tta_scales"] == "[32, 40]" and 0 <= run.data.metrics["test_acc"] <= 1
    # A model with a fixed-size pool cannot take other sizes: a clear error, not a traceback.
    bad = run_module("sweeps.train", TINY + ["trainer.tta_scales=[64]", "tracking.enabled=false"], project)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "trainer.tta_scales=[64]" in bad.stderr and "model=resnet34" in bad.stderr
