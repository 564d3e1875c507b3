"""``python -m sweeps.report`` on runs made by real ``python -m sweeps.train`` subprocesses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TINY, mlflow_runs, run_module

from sweeps import report as rpt
from sweeps.plots import is_png

PNG_SIG = b"\x89PNG\r\n\x1a\n"
HEADER = "| Method | # of parameters | # of epochs | Train Accuracy | Validation Accuracy | Test Accuracy | Run |"

# A grid over two axes: with model.head=[256] the model is over budget.max_params (never
# trained: INFEASIBLE); optim.lr=-1 fails validation (FAIL); 1e-7 stays under the threshold
# pruner's 20% at epoch 2 (PRUNED); 0.1 and 0.05 complete.
LRS = ["0.1", "0.05", "1e-7", "-1"]
HEADS = ["[]", "[256]"]
BUDGET = 20_000
SWEEP = [
    "--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", "hydra.sweeper.direction=maximize",
    "hydra.sweeper.study_name=abl", "tracking.experiment=abl", *TINY, "augment=norm", "tracking.log_model=false",
    "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=0",
    "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=0.2",
    "+hydra.sweeper.pruner.n_warmup_steps=2", "hydra.sweeper.max_failure_rate=0.5", "optim=sgd",
    f"budget.max_params={BUDGET}", f"model.head=choice({','.join(HEADS)})", f"optim.lr=choice({','.join(LRS)})",
]


def _valid_png(path: Path) -> None:
    import matplotlib.image

    assert is_png(path), path
    assert path.read_bytes()[:8] == PNG_SIG
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def _table_rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and line != HEADER and not line.startswith("| :"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def _uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def _study(root: Path):
    import optuna

    return optuna.load_study(study_name="abl", storage=f"sqlite:///{root / 'multirun' / 'optuna.db'}")


def _expected_state(trial) -> str:
    if trial.user_attrs.get("infeasible"):
        return "INFEASIBLE"
    return trial.state.name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    """(project root, sweep dir) of one real 8-trial sweep: complete, pruned, failed and over-budget trials."""
    root = tmp_path_factory.mktemp("sweep")
    res = run_module("sweeps.train", SWEEP, cwd=root, timeout=400)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    sweep_dir = next((root / "multirun").glob("*/*/optimization_results.yaml")).parent
    return root, sweep_dir


def _model_size(head: str) -> int:
    from hydra import compose, initialize_config_dir

    from sweeps.paths import CONF_DIR
    from sweeps.models import model_size

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"model.head={head}"])
    return model_size(cfg)


@pytest.mark.slow
def test_sweep_records_a_parent_and_one_child_per_trial(sweep):
    import mlflow

    root, _ = sweep
    trials = _study(root).trials
    assert len(trials) == len(LRS) * len(HEADS)
    runs = mlflow_runs(root, "abl")
    parent_id = _study(root).user_attrs["mlflow_parent_run_id"]
    parent = next(r for r in runs if r.info.run_id == parent_id)
    assert parent.info.run_name == "abl" and "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == len(runs) - 1
    by_trial = {int(r.data.tags["sweeps.trial"]): r for r in children}
    for t in trials:
        # Every trial is a run, also one refused by validation before training (optim.lr=-1).
        run = by_trial[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.data.tags["sweeps.study"] == "abl"
        assert run.data.tags["sweeps.state"] == _expected_state(t), (t.params, t.state)
        if run.data.tags["sweeps.state"] != "COMPLETE":
            assert run.data.tags.get("sweeps.reason")
    assert len(by_trial) == len(trials)
    assert {"COMPLETE", "PRUNED", "INFEASIBLE"} <= {r.data.tags["sweeps.state"] for r in children}
    client = mlflow.MlflowClient(_uri(root))
    for run in children:
        art = Path(run.info.artifact_uri.removeprefix("file://"))
        if run.data.tags["sweeps.state"] == "COMPLETE":
            # per-epoch metrics with step = epoch, and the per-run figures as artifacts
            assert {m.step for m in client.get_metric_history(run.info.run_id, "images_per_s")} == {1, 2}
            assert {m.step for m in client.get_metric_history(run.info.run_id, "epoch_time")} == {1, 2}
            for name in ("learning_curves.png", "confusion_matrix.png"):
                _valid_png(art / "figures" / name)
            assert not (art / "checkpoints").exists()  # tracking.log_model=false


@pytest.mark.slow
def test_report_of_a_sweep_dir(sweep):
    import mlflow

    root, sweep_dir = sweep
    res = run_module("sweeps.report", [str(sweep_dir)], cwd=root, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    md = (sweep_dir / "report.md").read_text()
    assert HEADER in md
    rows = _table_rows(md)
    study = _study(root)
    trials = {t.user_attrs.get("mlflow_run_id"): t for t in study.trials}
    assert len(study.trials) == len(LRS) * len(HEADS)
    runs = {r.info.run_id: r for r in mlflow_runs(root, "abl") if "sweeps.trial" in r.data.tags}
    assert len(rows) == len(study.trials)  # one row per trial
    assert {row[-1].strip("`") for row in rows if row[-1].startswith("`")} == set(runs)
    by_number = {t.number: t for t in study.trials}
    sizes = {head: _model_size(head) for head in HEADS}
    assert sizes["[]"] <= BUDGET < sizes["[256]"]
    seen = set()
    for row in rows:
        run = runs.get(row[-1].strip("`"))
        number = int(run.data.tags["sweeps.trial"]) if run else int(row[-1].removeprefix("trial "))
        trial = by_number[number]
        seen.add(number)
        n = sizes[str(trial.params["model.head"])]
        assert row[1] == f"{n:,}" == f"{trial.user_attrs['n_params']:,}"
        if run is not None:
            assert int(run.data.params["n_params"]) == n
        state = run.data.tags["sweeps.state"] if run else trial.state.name
        if state == "COMPLETE":
            assert row[5] == f"{100 * run.data.metrics['test_acc']:.2f}"
            assert row[4].strip("*") == f"{100 * run.data.metrics['best_val_acc']:.2f}"
            assert row[2] == "2"
        elif state == "PRUNED":
            assert row[5] == "PRUNED at epoch 2" and row[2] == "2"
        elif state == "FAIL":
            assert row[5].startswith("FAIL: ") and row[4] == "–"
            assert trial.params["optim.lr"] == -1 and "optim.lr=-1" in row[5]
        else:
            assert state == "INFEASIBLE"
            assert row[5] == f"INFEASIBLE: {n:,} params, {n - BUDGET:,} over the {BUDGET:,} budget"
        assert f"optim.lr={trial.params['optim.lr']}" in row[0]
    assert seen == set(by_number)
    assert sum(row[5].startswith("FAIL") for row in rows) == 1
    assert sum(row[5].startswith("PRUNED") for row in rows) == 1
    assert sum(row[5].startswith("INFEASIBLE") for row in rows) == len(LRS)
    stars = [row for row in rows if "★" in row[0]]
    assert len(stars) == 1 and rows[0] is stars[0]
    assert trials[stars[0][-1].strip("`")].number == study.best_trial.number
    names = {p.name for p in sweep_dir.glob("*.png")}
    assert {"val_acc_vs_params.png", "optuna_history.png", "optuna_importances.png",
            "top_k_learning_curves.png"} <= names
    assert any(n.startswith("ablation_") for n in names)
    for name in names:
        _valid_png(sweep_dir / name)
        assert f"]({name})" in md
    # ... and the same files are artifacts of the parent run
    client = mlflow.MlflowClient(_uri(root))
    logged = {Path(f.path).name for f in client.list_artifacts(study.user_attrs["mlflow_parent_run_id"], "report")}
    assert {"report.md"} | names <= logged


@pytest.mark.slow
def test_a_study_whose_runs_are_gone_is_said_and_reported_from_its_values(sweep, tmp_path):
    """mlruns/ deleted after a sweep: the re-run says that the study's recorded trials have no runs
    in this store (and runs none again), and the report shows the study's values for them."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(sweep[0], root)
    shutil.rmtree(root / "mlruns")
    res = run_module("sweeps.train", SWEEP, cwd=root, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert f"has {len(LRS) * len(HEADS)} recorded trial(s) whose MLflow runs are not in" in out, out[-3000:]
    study = _study(root)
    assert len(study.trials) == len(LRS) * len(HEADS)  # nothing ran again
    res = run_module("sweeps.report", ["abl"], cwd=root, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    md = next((root / "reports").rglob("report.md")).read_text()
    assert "have no MLflow run in" in md and "the values the Optuna study holds" in md, md[-2000:]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    cells = {row[4].strip("*") for row in _table_rows(md)}
    assert complete and all(f"{100 * t.value:.2f}" in cells for t in complete), (cells, [t.value for t in complete])


def test_report_of_several_experiments(sweep, tmp_path, monkeypatch):
    """Experiment names (store and study found from the cwd); two targets give two sections."""
    import mlflow

    root, _ = sweep
    client = mlflow.MlflowClient(_uri(root))
    other = client.create_experiment("abl_single")
    src = next(r for r in mlflow_runs(root, "abl") if r.data.tags.get("sweeps.state") == "COMPLETE")
    copy = client.create_run(other, run_name="optim=sgd,optim.lr=0.1")
    for k, v in src.data.params.items():
        client.log_param(copy.info.run_id, k, v)
    for k, v in src.data.metrics.items():
        client.log_metric(copy.info.run_id, k, v)
    client.set_tag(copy.info.run_id, "sweeps.state", "COMPLETE")
    client.set_terminated(copy.info.run_id)
    monkeypatch.chdir(root)
    assert rpt.main(["abl", "abl_single", "--out", str(tmp_path / "two")]) == 0
    md = (tmp_path / "two" / "report.md").read_text()
    assert "## abl\n" in md and "## abl_single\n" in md
    assert len(_table_rows(md)) == len(LRS) * len(HEADS) + 1
    assert "No Optuna study" in md.split("## abl_single")[1]
    assert (tmp_path / "two" / "abl__optuna_history.png").is_file()  # the study found in ./multirun
    assert (tmp_path / "two" / "abl_single__val_acc_vs_params.png").is_file()


@pytest.mark.slow
def test_report_errors(sweep, tmp_path, monkeypatch, capsys):
    root, _ = sweep
    # unknown name, through the real CLI: one paragraph, exit 2, no traceback
    res = run_module("sweeps.report", ["no_such_sweep"], cwd=root, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "'no_such_sweep'" in err and "abl" in err

    import mlflow

    uri = _uri(root)
    mlflow.MlflowClient(uri).create_experiment("empty_one")
    capsys.readouterr()
    assert rpt.main(["empty_one", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "has no runs" in err and err.count("\n") == 1

    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path)
    assert rpt.main([str(tmp_path / "plain"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "not a sweep dir" in err and "abl" in err and err.count("\n") == 1

    assert rpt.main(["abl"]) == 2  # no store in this cwd
    assert "no MLflow store" in capsys.readouterr().err


# ------------------------------------------------------------ pure logic


def _row(name: str, val: float | None = 0.5, state: str = "COMPLETE", **kw) -> rpt.Row:
    row = rpt.Row(run_name=name, tokens=rpt.name_tokens(name), val_acc=val, state=state, **kw)
    row.objective = val if state == "COMPLETE" else None
    return row


def test_split_tokens_keeps_lists_whole():
    assert rpt.split_tokens("optim=sgd,model.channels=[8,16],model.blocks=[1,1]") == [
        "optim=sgd", "model.channels=[8,16]", "model.blocks=[1,1]"]
    assert rpt.name_tokens("optim=sgd,trial.number=3,+foo=1") == {"optim": "sgd", "foo": "1"}


def test_one_table_per_ablation_axis():
    rows = [_row("defaults", 0.80), _row("optim=sgd", 0.70), _row("optim=adam", 0.75),
            _row("augment=none", 0.60), _row("augment=norm", 0.65), _row("trainer.batch_size=32", 0.81)]
    axes = rpt.ablation_axes(rows)
    assert set(axes) == {"optim", "augment", "trainer.batch_size"}
    assert [r.label for r in axes["optim"]] == ["baseline", "optim=sgd", "optim=adam"]


def test_free_search_is_one_table():
    rows = [_row(f"optim.lr={lr},optim.weight_decay={wd}") for lr, wd in ((0.1, 1e-4), (0.01, 5e-4), (0.03, 1e-3))]
    assert rpt.ablation_axes(rows) is None
    assert rpt.label_rows(rows) == ["optim.lr", "optim.weight_decay"]


def test_state_rows_and_sorting():
    sweep = rpt.Sweep("e", "1", "sqlite://", budget=5_000_000)
    sweep.rows = [
        _row("a", 0.5, run_id="r1", n_params=1000, epochs=3, test_acc=0.4),
        _row("b", 0.9, run_id="r2", n_params=2000, epochs=3, test_acc=0.8, best=True),
        _row("c", 0.95, state="PRUNED", run_id="r3", n_params=1500, epochs=1),
        _row("d", None, state="FAIL", run_id="r4", reason="Diverged: loss is nan | at step 3"),
        _row("e", None, state="INFEASIBLE", n_params=5_250_000, trial=7),
    ]
    rpt.label_rows(sweep.rows)
    lines = rpt.table(sweep.rows, sweep)
    assert lines[0] == HEADER
    body = lines[2:]
    assert body[0].startswith("| **★ b** | 2,000 | 3 |") and "| **90.00** | 80.00 |" in body[0]
    assert "| 50.00 | 40.00 |" in body[1]
    assert "PRUNED at epoch 1" in body[2] and "95.00" in body[2]
    assert "FAIL: Diverged: loss is nan \\| at step 3" in body[3]
    assert "INFEASIBLE: 5,250,000 params, 250,000 over the 5,000,000 budget" in body[4] and "trial 7" in body[4]


def test_pareto_front():
    from sweeps.plots import pareto_front

    pts = [(100, 0.5), (200, 0.7), (150, 0.4), (300, 0.69), (400, 0.9)]
    assert pareto_front(pts) == [0, 1, 4]


def test_mark_pareto_front_drops_dominated_rows():
    rows = [rpt.Row(run_name=n, values=v) for n, v in
            [("a", [0.9, 100.0]), ("b", [0.8, 50.0]), ("c", [0.7, 80.0]), ("d", [0.9, 100.0]), ("e", [0.5, 50.0])]]
    rows.append(rpt.Row(run_name="f", state="FAIL"))
    rpt.mark_pareto_front(rows, [True, False])  # maximize accuracy, minimize parameters
    assert [r.run_name for r in rows if r.pareto] == ["a", "b", "d"]  # c is beaten by b; e ties b on size only


def test_multi_objective_sweep_and_its_pareto_report(tmp_path):
    """A real grid sweep on two objectives: each trial has both values, and the report's
    ◆ rows are exactly Optuna's best_trials."""
    import optuna

    # An override before --multirun: sweeps.train takes overrides on both sides of Hydra's flags.
    args = ["tracking.experiment=mo", "--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1",
            "hydra/sweeper/sampler=grid",
            *[a for a in TINY if not a.startswith("model.stem_channels")], "trainer.epochs=1",
            "objective=[best_val_acc,n_params]", "hydra.sweeper.direction=[maximize,minimize]",
            "hydra.sweeper.study_name=mo", "model.stem_channels=choice(4,8,16)"]
    res = run_module("sweeps.train", args, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'multirun' / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 3 and all(len(t.values) == 2 for t in study.trials)
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "mo") if "best_val_acc" in r.data.metrics}
    for t in study.trials:
        run = runs[t.user_attrs["mlflow_run_id"]]
        assert t.values == [run.data.metrics["best_val_acc"], run.data.metrics["n_params"]]
    res = run_module("sweeps.report", ["mo"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "reports" / "mo" / "report.md").read_text()
    marked = {row[0].removeprefix("◆ ") for row in _table_rows(md) if row[0].startswith("◆ ")}
    assert marked == {f"model.stem_channels={t.params['model.stem_channels']}" for t in study.best_trials}, md
    assert "★" not in "".join(row[0] for row in _table_rows(md))  # no single best on two objectives
    assert "`best_val_acc` (higher is better) and `n_params` (lower is better)" in md
