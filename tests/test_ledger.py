"""The study's books, in process: the counting, surplus, reap, recover and interrupt rules of
``sweeps_optuna.ledger`` and the staleness rules of ``sweeps_optuna.liveness``, each on a real
Optuna study (in memory, or SQLite where two processes share one), with no Hydra and no subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from sweeps_optuna import contract, ledger, liveness
from sweeps_optuna.hooks import Outcome

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": FloatDistribution(0.0, 1.0)}


def new_study(storage=None, name="s", directions=("maximize",)) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, directions=list(directions),
                               sampler=optuna.samplers.RandomSampler(seed=0))


def me() -> dict:
    return liveness.this_process()


def dead_owner() -> dict:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return {"host": socket.gethostname(), "pid": gone.pid, "pid_start": None, "beat": time.time()}


def finished(study, state, value=None, **attrs) -> optuna.trial.FrozenTrial:
    trial = study.ask(SPACE)
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return study.trials[-1]


# --------------------------------------------------------------------------- counting


def test_counted_trials_are_complete_pruned_and_real_failures_only():
    study = new_study()
    finished(study, TrialState.COMPLETE, 0.5)
    finished(study, TrialState.PRUNED)
    finished(study, TrialState.PRUNED, infeasible=True)  # over budget: its point is decided
    finished(study, TrialState.FAIL, fail_reason="boom")
    finished(study, TrialState.FAIL, interrupted=True)  # re-queued: not counted
    finished(study, TrialState.FAIL, surplus=True)  # never launched: not counted
    study.ask(SPACE)  # RUNNING
    tally = ledger.Tally.of(study)
    assert tally.counted == 4
    assert [t.number for t in tally.failures] == [3]
    assert [t.number for t in tally.running] == [6]
    assert tally.has_room(6) and not tally.has_room(5)
    assert [contract.trial_state(t) for t in study.trials] == [
        "COMPLETE", "PRUNED", "INFEASIBLE", "FAIL", "INTERRUPTED", "FAIL", "RUNNING"]


# --------------------------------------------------------------------------- surplus


def test_a_trial_asked_after_the_study_filled_up_is_surplus_and_never_runs():
    study = new_study()
    finished(study, TrialState.COMPLETE, 0.1)
    other = study.ask(SPACE)  # another process's trial, still running: it fills the study of 2
    assert ledger.ask(study, 2, SPACE, me()) is None
    surplus = study.trials[-1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs[contract.SURPLUS] is True
    assert not contract.is_counted(surplus)
    # a slot that is still free is not surplus
    study.tell(other, 0.2)
    mine = ledger.ask(study, 3, SPACE, me())
    assert mine is not None and study.trials[-1].state == TrialState.RUNNING
    assert study.trials[-1].user_attrs[contract.OWNER]["pid"] == os.getpid()


def test_two_processes_asking_for_the_last_slot_at_once_leave_exactly_one(tmp_path):
    """Both asked before either checked: the lower trial number keeps the slot, whichever checks first."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    a = new_study(url)
    b = optuna.load_study(study_name="s", storage=url)
    finished(a, TrialState.COMPLETE, 0.1)
    first = b.ask(SPACE)  # b asked first and has not checked yet
    assert ledger.ask(a, 2, SPACE, me()) is None  # a asked second, checks first: surplus
    assert ledger.claim(b, first, 2)  # b keeps its slot
    tally = ledger.Tally.of(a)
    assert tally.counted + len(tally.running) == 2 and [t.number for t in tally.running] == [first.number]


@pytest.mark.parametrize("read_before", [True, False], ids=["claim-from-tally", "claim-reads"])
def test_processes_sharing_a_study_run_exactly_n_trials(tmp_path, read_before):
    """Three handles on one SQLite study take turns asking, running and telling, one of them
    dying mid-trial once: the study ends with exactly n_trials counted, the dead trial's point re-run."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    handles = [new_study(url)] + [optuna.load_study(study_name="s", storage=url) for _ in range(2)]
    n_trials, killed = 7, None
    for step in range(100):
        study = handles[step % 3]
        tally = ledger.Tally.of(study)
        ledger.reap(study, tally, lambda t: t.user_attrs.get(contract.OWNER, {}).get("pid") == -1)
        if not tally.has_room(n_trials):
            if not tally.running:
                break
            continue
        trial = ledger.ask(study, n_trials, SPACE, me(), tally if read_before else None)
        if trial is None:
            continue
        if killed is None and step == 4:  # this "process" dies: its trial stays RUNNING with a dead owner
            study._storage.set_trial_user_attr(trial._trial_id, contract.OWNER, {"host": "h", "pid": -1})
            killed = trial
            continue
        ledger.tell_state(study, trial, TrialState.COMPLETE, [trial.params["x"]])
    trials = handles[0].trials
    done = [t for t in trials if contract.is_counted(t)]
    assert len(done) == n_trials and all(t.state == TrialState.COMPLETE for t in done)
    assert killed is not None
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs[contract.INTERRUPTED] is True
    assert [t.params["x"] for t in done].count(killed.params["x"]) == 1  # its point ran again, once
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("others", [0, 1, 2, 3])
@pytest.mark.parametrize("n_trials", [2, 3, 4, 5, 6])
def test_a_claim_from_the_read_before_asking_decides_as_a_fresh_read_would(tmp_path, n_trials, others):
    """Between this process's read and its ask, other processes ask trials of their own and pop a
    queued one: keeping or refusing the trial from the earlier read is what a fresh read decides."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    a = new_study(url)
    b = optuna.load_study(study_name="s", storage=url)
    finished(a, TrialState.COMPLETE, 0.1)
    finished(a, TrialState.FAIL, interrupted=True)
    a.enqueue_trial({"x": 0.5})
    before = ledger.Tally.of(a)
    for _ in range(others):
        b.ask(SPACE)  # the first takes the queued trial, the next ones are new
    trial = a.ask(SPACE)
    quick = ledger._most_ahead(before, trial.number) < n_trials
    fresh = ledger.claim(a, trial, n_trials)  # what reading every trial now decides
    assert fresh or not quick  # the earlier read never keeps a trial a fresh one refuses
    # and it keeps it without a read while far from full: 1 counted + the queued one + the others' new ones
    assert quick == (n_trials > 2 + max(0, others - 1))


def test_a_claim_far_from_full_needs_no_read_and_near_full_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = new_study(url)
    reads = []
    real = study._storage.get_all_trials
    study._storage.get_all_trials = lambda *a, **k: reads.append(k.get("states")) or real(*a, **k)
    tally = ledger.Tally.of(study)
    reads.clear()
    assert ledger.ask(study, 5, SPACE, me(), tally) is not None
    assert reads == [(TrialState.WAITING,)]  # only Optuna's own look for a queued trial
    other = optuna.load_study(study_name="s", storage=url)
    tally = ledger.Tally.of(study)
    other.ask(SPACE)  # another process took the last slot meanwhile
    reads.clear()
    assert ledger.ask(study, 2, SPACE, me(), tally) is None  # the bound says "maybe full": it reads, and is surplus
    assert len(reads) == 2


# --------------------------------------------------------------------------- reap and recover


def running_trial(study, owner) -> optuna.trial.FrozenTrial:
    trial = study.ask({"lr": CategoricalDistribution([0.1, 0.01])})
    study._storage.set_trial_user_attr(trial._trial_id, contract.OWNER, owner)
    return study._storage.get_trial(trial._trial_id)


def test_a_stale_trial_whose_job_did_not_end_is_interrupted_and_its_point_queued_again():
    study = new_study()
    t = running_trial(study, dead_owner())
    closed = []
    tally = ledger.Tally.of(study)
    assert ledger.reap(study, tally, lambda t: True, lambda t: None, closed.append) == 1
    reaped = study.trials[t.number]
    assert reaped.state == TrialState.FAIL and reaped.user_attrs[contract.INTERRUPTED] is True
    assert "gone" in reaped.user_attrs[contract.FAIL_REASON]
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == t.params  # the interrupted trial's point, queued
    assert [x.number for x in closed] == [t.number]  # its records are closed
    assert tally.running == [] and tally.counted == 0


def test_a_new_trial_is_made_with_its_owner_in_one_write_and_a_queued_one_gets_it_on_the_pop(tmp_path):
    study = new_study(f"sqlite:///{tmp_path / 'study.db'}")
    made = []
    create = study._storage.create_new_trial
    study._storage.create_new_trial = lambda *a, **k: made.append(a) or create(*a, **k)
    trial = ledger.ask(study, 5, SPACE, me())
    (frozen,) = study.trials
    assert len(made) == 1 and frozen.user_attrs[contract.OWNER]["pid"] == os.getpid()  # never ownerless
    assert frozen.state == TrialState.RUNNING and frozen.datetime_start is not None and "x" in trial.params
    study.enqueue_trial({"x": 0.25})
    queued = ledger.ask(study, 5, SPACE, me())
    assert queued.params == {"x": 0.25} and queued.number == 1
    assert study.trials[1].user_attrs[contract.OWNER]["pid"] == os.getpid()


def test_a_trials_parameters_are_written_in_one_sqlite_commit_and_read_back_as_sampled(tmp_path):
    import sqlalchemy

    study = new_study(f"sqlite:///{tmp_path / 'study.db'}")
    space = {"x": FloatDistribution(0.0, 1.0), "lr": FloatDistribution(1e-4, 1.0, log=True),
             "opt": CategoricalDistribution(["sgd", "adamw"])}
    writes = []
    sqlalchemy.event.listen(study._storage._backend.engine, "before_cursor_execute",
                            lambda conn, cur, stmt, *a: writes.append(stmt) if stmt.startswith("INSERT INTO trial_params")
                            else None)
    commits = []
    sqlalchemy.event.listen(study._storage._backend.engine, "commit", lambda conn: commits.append(len(writes)))
    trial = ledger.ask(study, 5, space, me())
    assert len(writes) == 3 and sorted(set(commits)) == [0, 3], commits  # all three in one commit
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}").trials[0]
    assert again.params == trial.params and set(again.params) == set(space)
    assert again.distributions == space


def test_a_queued_trial_that_died_before_it_was_sampled_queues_its_point_again():
    study = new_study()
    study.enqueue_trial({"x": 0.25})
    popped = study._pop_waiting_trial_id()  # RUNNING, no params, no owner: its process died right here
    t = study._storage.get_trial(popped)
    assert t.params == {} and t.state == TrialState.RUNNING
    assert ledger.interrupt(study, t, "interrupted (its process is gone)")
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == {"x": 0.25}


def test_a_stale_trial_whose_job_ended_is_recovered_with_that_outcome_not_rerun():
    study = new_study()
    t = running_trial(study, dead_owner())
    tally = ledger.Tally.of(study)
    ledger.reap(study, tally, lambda t: True, lambda t: Outcome("COMPLETE", [0.75]))
    got = study.trials[t.number]
    assert got.state == TrialState.COMPLETE and got.value == 0.75 and got.user_attrs[contract.RECOVERED] is True
    assert not study.get_trials(states=(TrialState.WAITING,))  # nothing queued again
    assert tally.counted == 1 and tally.running == []

    pruned = running_trial(study, dead_owner())
    ledger.reap(study, ledger.Tally.of(study), lambda t: True, lambda t: Outcome("PRUNED", None, "pruned at epoch 2"))
    got = study.trials[pruned.number]
    assert got.state == TrialState.PRUNED and got.user_attrs[contract.REASON] == "pruned at epoch 2"


def test_a_recorded_result_with_the_wrong_number_of_objectives_is_not_trusted():
    study = new_study()
    t = running_trial(study, dead_owner())
    ledger.reap(study, ledger.Tally.of(study), lambda t: True, lambda t: Outcome("COMPLETE", [0.5, 100.0]))
    got = study.trials[t.number]
    assert got.state == TrialState.FAIL and got.user_attrs[contract.INTERRUPTED] is True
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_only_one_of_two_reapers_takes_a_stale_trial_over(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    a = new_study(url)
    b = optuna.load_study(study_name="s", storage=url)
    running_trial(a, dead_owner())
    tally_a, tally_b = ledger.Tally.of(a), ledger.Tally.of(b)  # both saw it RUNNING
    assert ledger.reap(a, tally_a, lambda t: True) == 1
    assert ledger.reap(b, tally_b, lambda t: True) == 0
    assert len(a.get_trials(states=(TrialState.WAITING,))) == 1  # queued again once, not twice


def test_interrupting_its_own_trial_and_a_trial_that_already_finished():
    study = new_study()
    t = running_trial(study, me())
    assert ledger.interrupt(study, t, "interrupted (KeyboardInterrupt)")
    assert study.trials[t.number].user_attrs[contract.INTERRUPTED] is True
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    other = new_study(name="other")
    done = finished(other, TrialState.COMPLETE, 0.3)
    assert not ledger.interrupt(other, done, "late")
    assert other.trials[done.number].state == TrialState.COMPLETE
    assert not other.get_trials(states=(TrialState.WAITING,))


# --------------------------------------------------------------------------- liveness


def frozen_with(owner=None, started_s_ago=0.0) -> optuna.trial.FrozenTrial:
    study = new_study()
    trial = study.ask(SPACE)
    if owner is not None:
        trial.set_user_attr(contract.OWNER, owner)
    t = study._storage.get_trial(trial._trial_id)
    if started_s_ago:
        from datetime import datetime, timedelta

        t.datetime_start = datetime.now() - timedelta(seconds=started_s_ago)
    return t


@pytest.mark.parametrize("interval", [None, 60])
def test_a_trials_first_attrs_are_written_while_its_job_runs_and_there_when_it_ends(tmp_path, interval):
    study = new_study(f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask(SPACE)
    first = [lambda: trial.set_user_attr(contract.OVERRIDES, ["x=0.5"]),
             lambda: trial.set_user_attr(contract.N_PARAMS, 7), lambda: trial.set_constraint("c", -1.0)]
    with liveness.Heartbeat(study._storage, trial._trial_id, interval, first=first):
        pass  # the job
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.user_attrs[contract.OVERRIDES] == ["x=0.5"] and stored.user_attrs[contract.N_PARAMS] == 7
    assert stored.system_attrs["constraints:c"] == -1.0


def test_a_storage_error_writing_the_first_attrs_is_raised_when_the_job_ends(tmp_path):
    study = new_study(f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask(SPACE)
    study.tell(trial, 0.5)  # a finished trial cannot be written: the storage refuses
    first = [lambda: study._storage.set_trial_user_attr(trial._trial_id, contract.OVERRIDES, ["x=0.5"])]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        with liveness.Heartbeat(study._storage, trial._trial_id, None, first=first):
            pass
    with pytest.raises(KeyError):  # the job's own error is the one that surfaces
        with liveness.Heartbeat(study._storage, trial._trial_id, None, first=first):
            raise KeyError("the job's")


def test_same_host_owners_are_judged_by_their_process():
    assert not liveness.is_stale(frozen_with(me()), 60)
    assert liveness.is_stale(frozen_with(dead_owner()), 60)
    reused = {**me(), "pid_start": "1"}  # this pid, but a process that started at another time
    assert liveness.is_stale(frozen_with(reused), 60)


def test_other_host_owners_are_judged_by_their_heartbeat():
    now = time.time()
    fresh = {"host": "elsewhere", "pid": 1, "pid_start": "9", "beat": now - 30}
    old = {**fresh, "beat": now - (liveness.STALE_HEARTBEATS * 60 + 1)}
    assert not liveness.is_stale(frozen_with(fresh), 60, now)
    assert liveness.is_stale(frozen_with(old), 60, now)
    assert not liveness.is_stale(frozen_with(old), None, now)  # heartbeats off: process check only


def test_an_ownerless_trial_is_stale_after_a_short_grace():
    """Killed between Optuna's ask and the owner's write: no owner to ask, so its age decides."""
    assert not liveness.is_stale(frozen_with(None), 60)
    assert liveness.is_stale(frozen_with(None, started_s_ago=61), 60)
    assert liveness.is_stale(frozen_with(None, started_s_ago=3), 2)  # a short heartbeat shortens it
    assert liveness.is_stale(frozen_with(None, started_s_ago=61), None)  # heartbeats off: still a minute
    assert not liveness.is_stale(frozen_with(None, started_s_ago=59), 600)  # at most a minute


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_optunas_own_stale_trial_handling_cannot_mark_a_trial_interrupted(tmp_path):
    """Why liveness keeps its own rules (its docstring): Optuna's fail_stale_trials makes the trial
    FAIL before its callback runs, and a finished trial takes no more user attrs, so it cannot be
    kept out of the count or recovered with its job's result."""
    seen = []
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1,
                                         heartbeat_stale_trial_callback=lambda s, t: seen.append(t.state))
    study = optuna.create_study(storage=storage)
    trial = study.ask(SPACE)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL and seen == [TrialState.FAIL]  # FAIL before the callback
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, contract.INTERRUPTED, True)
    assert contract.is_counted(study.trials[0])  # to the count, Optuna's FAIL is a real failure


def test_the_closing_line_and_results_describe_the_whole_study(tmp_path, caplog):
    """A process that finishes its share early names the trials still running elsewhere, and its
    results file counts every process's trials, not only its own."""
    import logging

    import yaml

    from sweeps_optuna import results

    study = new_study()
    finished(study, TrialState.COMPLETE, 0.5)
    other = {"host": "node-7", "pid": 4242, "pid_start": "1", "beat": time.time()}
    running_trial(study, other)
    with caplog.at_level(logging.INFO, logger="sweeps_optuna.results"):
        out = results.finish(study, 2, "sqlite:///x.db", str(tmp_path), 1.0, lambda overrides: None)
    assert "1/2 trials" in caplog.text and "1 trial(s) still running in other processes (node-7:4242)" in caplog.text
    saved = yaml.safe_load((tmp_path / results.RESULTS_FILE).read_text())
    assert saved["counted_trials"] == 1 == out["counted_trials"] and saved["best_value"] == 0.5
