"""``python -m sweeps.report`` on replicated trials: a real MLflow store laid out as the trainer's
replicates contract says (trial run = aggregates, one child run per seed), and a real Optuna study.

Every expected number is computed here with numpy and scipy from the metrics read back from the
store, never hard-coded: the report must agree with scipy on the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_report import _table_rows, _valid_png

from sweeps import report as rpt
from sweeps_optuna import contract as c

METRICS = ("best_val_acc", "test_acc", "best_val_loss", "test_loss", "train_acc_at_best")
SEEDS = (0, 1, 2)
# (run name, per-seed best_val_acc, per-seed test_acc): an ablation of optim and optim.lr around
# optim=adam,optim.lr=0.001. sgd scores exactly what the baseline does; lr=1e-06 is far worse;
# lr=0.01 is the best mean, within the seeds' noise of the baseline and of sgd.
TRIALS = [
    ("optim=adam,optim.lr=0.001", [0.950, 0.960, 0.955], [0.940, 0.945, 0.950]),
    ("optim=sgd,optim.lr=0.001", [0.950, 0.960, 0.955], [0.940, 0.945, 0.950]),
    ("optim=adam,optim.lr=1e-06", [0.300, 0.350, 0.320], [0.280, 0.330, 0.300]),
    ("optim=adam,optim.lr=0.01", [0.952, 0.958, 0.962], [0.941, 0.951, 0.946]),
]
N_PARAMS = 12_345


def _aggregates(values: list[float]) -> dict[str, float]:
    """What the trainer logs on a trial's run for one metric (the contract), computed with numpy/scipy."""
    a = np.asarray(values)
    n, mean, std = len(a), float(a.mean()), float(a.std(ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    return {"": mean, "_mean": mean, "_std": std, "_sem": sem, "_n": float(n), "_ci95_low": mean - half,
            "_ci95_high": mean + half}


def _per_seed(val: list[float], test: list[float]) -> list[dict[str, float]]:
    return [{"best_val_acc": v, "test_acc": t, "train_acc_at_best": min(1.0, v + 0.02), "best_val_loss": 1 - v,
             "test_loss": 1 - t} for v, t in zip(val, test)]


def _log_trial(client, exp: str, name: str, seeds: list[dict[str, float]], parent: str | None = None,
               study: str | None = None, trial: int | None = None, own_curve: bool = True) -> str:
    """A trial's run (aggregates over its seeds) and one child run per seed, as the trainer writes them."""
    tags = {c.TAG_STATE: c.COMPLETE, c.TAG_REPLICATES: str(len(seeds))}
    if parent:
        tags |= {"mlflow.parentRunId": parent, c.TAG_STUDY: study, c.TAG_TRIAL: str(trial)}
    run = client.create_run(exp, run_name=name, tags=tags).info.run_id
    client.log_param(run, "n_params", N_PARAMS)
    client.log_param(run, "objective", "best_val_acc")
    for m in METRICS:
        for suffix, v in _aggregates([s[m] for s in seeds]).items():
            client.log_metric(run, m + suffix, v)
    client.log_metric(run, "epochs_run", 2)
    for i, (seed, metrics) in enumerate(zip(SEEDS, seeds)):
        rep = client.create_run(exp, run_name=f"{name},seed={seed}", tags={
            "mlflow.parentRunId": run, c.TAG_REPLICATE: str(i), c.TAG_REPLICATE_SEED: str(seed),
            c.TAG_REPLICATE_OF: run, c.TAG_STATE: c.COMPLETE}).info.run_id
        for m, v in metrics.items():
            client.log_metric(rep, m, v)
        for epoch in (1, 2):
            client.log_metric(rep, "val_acc", metrics["best_val_acc"] * epoch / 2, step=epoch)
        client.set_terminated(rep)
    for epoch in (1, 2) if own_curve else ():
        client.log_metric(run, "val_acc", float(np.mean([s["best_val_acc"] for s in seeds])) * epoch / 2, step=epoch)
    client.set_terminated(run)
    return run


@pytest.fixture
def replicated(tmp_path) -> tuple[Path, str]:
    """(project root, tracking uri) of a 4-trial sweep of 3 seeds each, its study in multirun/optuna.db."""
    import mlflow
    import optuna

    (tmp_path / "mlruns").mkdir()
    (tmp_path / "multirun").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("reps")
    parent = client.create_run(exp, run_name="reps", tags={c.TAG_ROLE: c.ROLE_PARENT}).info.run_id
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="reps", direction="maximize",
                                storage=f"sqlite:///{tmp_path / 'multirun' / 'optuna.db'}")
    study.set_user_attr(c.PARENT_RUN_ID, parent)
    dists = {"optim": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
             "optim.lr": optuna.distributions.FloatDistribution(1e-7, 1.0, log=True)}
    for number, (name, val, test) in enumerate(TRIALS):
        run = _log_trial(client, exp, name, _per_seed(val, test), parent, "reps", number)
        params = dict(token.split("=") for token in name.split(","))
        study.add_trial(optuna.trial.create_trial(
            params={"optim": params["optim"], "optim.lr": float(params["optim.lr"])}, distributions=dists,
            value=float(np.mean(val)), user_attrs={c.RUN_ID: run, c.N_PARAMS: N_PARAMS}))
    client.set_terminated(parent)
    return tmp_path, uri


def _seeds(uri: str) -> dict[str, dict[str, list[float]]]:
    """{trial run name: {metric: per-seed values}}, read back from the replicate runs in the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("reps").experiment_id], max_results=1000)
    names = {r.info.run_id: r.info.run_name for r in runs}
    out: dict[str, dict[str, list[float]]] = {}
    for r in sorted(runs, key=lambda r: int(r.data.tags.get(c.TAG_REPLICATE, -1))):
        if c.TAG_REPLICATE_OF in r.data.tags:
            trial = out.setdefault(names[r.data.tags[c.TAG_REPLICATE_OF]], {})
            for m in METRICS:
                trial.setdefault(m, []).append(r.data.metrics[m])
    return out


def _pm(values: list[float]) -> str:
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f} (n={len(values)})"


def _delta(a: list[float], b: list[float]) -> tuple[str, bool]:
    """scipy's Welch test of a against b: the report's Δ cell without its mark, and whether it is significant."""
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    return (f"{100 * (np.mean(a) - np.mean(b)):+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]",
            bool(res.pvalue < 0.05))


def _report(root: Path, uri: str, monkeypatch, *args: str) -> str:
    monkeypatch.chdir(root)  # the study is found in ./multirun/optuna.db, as for a user's project
    assert rpt.main(["reps", "--tracking-uri", uri, "--out", str(root / "out"), *args]) == 0
    return (root / "out" / "report.md").read_text()


def _tables(md: str) -> dict[str, list[list[str]]]:
    """{section heading: its table's rows (header row dropped)}."""
    out = {}
    for part in md.split("\n### ")[1:]:
        heading = part.splitlines()[0]
        rows = [r for r in _table_rows(part) if r[0] != "Method"]
        if rows:
            out[heading] = rows
    return out


def test_rows_are_trials_and_their_stats_are_scipys(replicated, monkeypatch):
    root, uri = replicated
    seeds = _seeds(uri)
    assert set(seeds) == {name for name, _, _ in TRIALS} and all(len(v["test_acc"]) == 3 for v in seeds.values())
    [sweep] = rpt.load_sweeps(rpt.Target("reps", uri))
    assert len(sweep.rows) == len(TRIALS)  # the replicate runs are no rows, their trials no parents
    for row in sweep.rows:
        assert [r.seed for r in row.replicates] == list(SEEDS) and [r.index for r in row.replicates] == [0, 1, 2]
        assert row.n == 3
        for m in METRICS:
            d = row.dist(m)
            assert d.mean == pytest.approx(np.mean(seeds[row.run_name][m]), abs=1e-12)
            assert d.std == pytest.approx(np.std(seeds[row.run_name][m], ddof=1), abs=1e-12)
            low, high = d.ci95
            expected = stats.t.interval(0.95, 2, loc=np.mean(seeds[row.run_name][m]),
                                        scale=stats.sem(seeds[row.run_name][m]))
            assert (low, high) == pytest.approx(expected, abs=1e-12)
    by_name = {r.run_name: r for r in sweep.rows}
    a, b = by_name[TRIALS[2][0]], by_name[TRIALS[0][0]]
    d = rpt.welch(a.dist("test_acc"), b.dist("test_acc"))
    res = stats.ttest_ind(seeds[a.run_name]["test_acc"], seeds[b.run_name]["test_acc"], equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (d.p, d.df, d.low, d.high) == pytest.approx((res.pvalue, res.df, ci.low, ci.high), rel=1e-9)

    md = _report(root, uri, monkeypatch)
    assert "Welch's t-test" in md and "tied with" in md
    tables = _tables(md)
    assert set(tables) == {"Ablation: optim", "Ablation: optim.lr"}, md
    baseline = TRIALS[0][0]
    for heading, rows in tables.items():
        assert "Baseline: **baseline (optim=adam, optim.lr=0.001)**." in md.split(f"### {heading}")[1]
        for row in rows:
            run = next(name for name, r in by_name.items() if f"`{r.run_id}`" == row[-1])
            s = seeds[run]
            assert row[3] == _pm(s["train_acc_at_best"])
            assert row[4].strip("*") == _pm(s["best_val_acc"])
            assert row[5] == _pm(s["test_acc"])
            if run == baseline:
                assert row[6] == row[7] == "baseline"
                continue
            for cell, metric in ((row[6], "best_val_acc"), (row[7], "test_acc")):
                text, significant = _delta(s[metric], seeds[baseline][metric])
                assert cell.removesuffix(" ▲").removesuffix(" ▼") == text, (run, metric, cell)
                assert cell.endswith((" ▲", " ▼")) == significant, (run, metric, cell)
    # the bad row is marked significantly worse; sgd, identical to the baseline, is not marked different
    lr_rows = {r[0].strip("*★ "): r for r in tables["Ablation: optim.lr"]}
    bad = lr_rows["optim.lr=1e-06"]
    assert bad[6].endswith(" ▼") and bad[7].endswith(" ▼")
    [sgd] = [r for r in tables["Ablation: optim"] if "optim=sgd" in r[0]]
    assert all(cell.startswith("+0.00 [") and not cell.endswith(("▲", "▼")) for cell in sgd[6:8]), sgd
    # ★: the best mean (lr=0.01) and every row scipy cannot tell from it; never the bad row
    best = max(seeds, key=lambda n: np.mean(seeds[n]["best_val_acc"]))
    assert best == TRIALS[3][0]
    tied = {n for n in seeds if n == best or stats.ttest_ind(
        seeds[n]["best_val_acc"], seeds[best]["best_val_acc"], equal_var=False).pvalue >= 0.05}
    assert tied == {TRIALS[0][0], TRIALS[1][0], TRIALS[3][0]}
    for rows in tables.values():
        for row in rows:
            run = next(name for name, r in by_name.items() if f"`{r.run_id}`" == row[-1])
            assert row[0].startswith("**★ ") == (run in tied), row
            assert row[4].startswith("**") == (run in tied), row
    assert "★ also marks 2 run(s) statistically tied with it" in md
    # figures: the bars and the scatter say which error bars they carry
    assert "Ablation: optim (error bars: 95% CI of the mean over seeds)" in md
    assert "Validation accuracy vs parameter count (error bars: 95% CI of the mean over seeds)" in md
    for name in ("val_acc_vs_params.png", "ablation_optim.png", "ablation_optim.lr.png", "optuna_history.png"):
        _valid_png(root / "out" / name)


def test_another_baseline_and_a_wrong_one(replicated, monkeypatch, capsys):
    root, uri = replicated
    seeds = _seeds(uri)
    md = _report(root, uri, monkeypatch, "--baseline", "optim.lr=1e-06")
    # the lr table is now compared with the bad row: every other row is significantly better
    lr = {r[0].strip("*★ "): r for r in _tables(md)["Ablation: optim.lr"]}
    assert lr["optim.lr=1e-06"][6] == "baseline"
    for label, name in (("baseline (optim=adam, optim.lr=0.001)", TRIALS[0][0]), ("optim.lr=0.01", TRIALS[3][0])):
        text, significant = _delta(seeds[name]["best_val_acc"], seeds[TRIALS[2][0]]["best_val_acc"])
        assert significant and lr[label][6] == f"{text} ▲"
    # the optim table has no such row: it keeps its own baseline
    assert "Baseline: **baseline (optim=adam, optim.lr=0.001)**." in md.split("### Ablation: optim\n")[1]
    assert rpt.main(["reps", "--tracking-uri", uri, "--out", str(root / "o2"), "--baseline", "optim=rmsprop"]) == 2
    err = capsys.readouterr().err
    assert "--baseline 'optim=rmsprop' names no row" in err and "'optim.lr=0.01'" in err


def test_a_single_run_with_replicates_is_one_row(tmp_path, monkeypatch):
    """``python -m sweeps.train replicates=3`` outside a sweep: no parent, three seeds, one row; a
    run of one seed beside it stays as today (no interval, no test, the bare difference)."""
    import mlflow

    (tmp_path / "mlruns").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("reps")
    name, val, test = TRIALS[0]
    run = _log_trial(client, exp, name, _per_seed(val, test), own_curve=False)  # curves only in its seeds' runs
    single = client.create_run(exp, run_name="optim=sgd", tags={c.TAG_STATE: c.COMPLETE}).info.run_id
    for m, v in _per_seed([0.9], [0.89])[0].items():
        client.log_metric(single, m, v)
    client.set_terminated(single)
    md = _report(tmp_path, uri, monkeypatch)
    rows = _tables(md)["Results: optim, optim.lr"]
    assert len(rows) == 2
    by_run = {r[-1].strip("`"): r for r in rows}
    assert by_run[run][5] == _pm(test) and by_run[run][6] == "baseline"  # the best row is the table's baseline
    one = by_run[single]
    assert one[4] == "90.00" and one[5] == "89.00"  # n=1: as today
    assert one[6] == f"{100 * (0.9 - np.mean(val)):+.2f}" and one[7] == f"{100 * (0.89 - np.mean(test)):+.2f}"
    assert "★" not in one[0] and "★" in by_run[run][0]
    assert "Learning curves of the top 2" in md
    _valid_png(tmp_path / "out" / "top_k_learning_curves.png")


def test_single_run_sweeps_keep_the_seed_format():
    """n=1 everywhere: the table is the seeds' table, no Δ columns, one ★."""
    sweep = rpt.Sweep("e", "1", "sqlite://")
    sweep.rows = [rpt.Row(run_name=n, tokens=rpt.name_tokens(n), val_acc=v, test_acc=v, run_id=n) for n, v in
                  (("optim=sgd", 0.9), ("optim=adam", 0.91))]
    for r in sweep.rows:
        r.objective = r.val_acc
    rpt.label_rows(sweep.rows)
    ranked = sorted(sweep.rows, key=rpt.sort_key(sweep))
    rpt.mark_best(sweep, ranked)
    assert not rpt.replicated(sweep)
    lines = rpt.table(sweep.rows, sweep, rpt.pick_baseline(ranked))
    assert lines[0] == rpt.HEADER and lines[2].startswith("| **★ optim=adam** |") and "★" not in lines[3]
