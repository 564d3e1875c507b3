"""An in-process job reaches its study through the sweep's open storage, and only then."""

from __future__ import annotations

import optuna

from sweeps_optuna import storage


def test_a_job_in_the_sweep_process_gets_the_sweeps_storage(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage.open_storage(url))
    storage.share(url, study._storage)
    assert storage.open_shared(url) is study._storage
    trial = study.ask()
    job = optuna.load_study(study_name="s", storage=storage.open_shared(url))
    assert [t.number for t in job.trials] == [trial.number]  # the job sees the sweep's trial
    job._storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", "r")
    assert study.trials[0].user_attrs["mlflow_run_id"] == "r"


def test_another_url_or_process_opens_its_own(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    mine = storage.open_storage(url)
    storage.share(url, mine)
    other = storage.open_shared(f"sqlite:///{tmp_path / 'b.db'}")
    assert other is not mine and isinstance(other, optuna.storages.RDBStorage)
    real = storage.os.getpid()
    monkeypatch.setattr(storage.os, "getpid", lambda: real + 1)  # a forked job: the connections are not its own
    assert storage.open_shared(url) is not mine
