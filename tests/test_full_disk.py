"""A disk that really fills up in the middle of a sweep (a small tmpfs holds the whole project).

``paths.min_free_mb=0`` turns the up-front free-space check off, as a user who
lowered it would, so the disk fills while a trial trains: the sweep must end
with one paragraph (no chained tracebacks), leave no partial checkpoint, and
once space is freed one re-run of the same command must finish every record.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import TINY, run_module
from test_kill_windows import LRS, assert_final

DISK_MB = 96


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


@pytest.mark.slow
def test_a_disk_that_fills_mid_sweep_ends_in_one_paragraph_and_one_rerun_finishes(small_disk):
    import mlflow

    name = "full"
    args = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=1",
            f"hydra.sweeper.study_name={name}", f"tracking.experiment={name}", "paths.min_free_mb=0",
            *[a for a in TINY if not a.startswith(("trainer.epochs", "trainer.limit_train"))], "trainer.epochs=8",
            "augment=norm", "tracking.log_model=false", "tracking.log_figures=false", f"optim.lr=choice({LRS[0]},{LRS[1]})"]
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.train", *args], cwd=small_disk, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{small_disk / 'mlruns' / 'mlflow.db'}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if any("val_acc" in r.data.metrics and r.info.status == "RUNNING" for r in runs):
                break  # a trial is training: an epoch done, more to come
        except Exception:  # noqa: BLE001 - the store may not exist yet
            pass
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before the disk could fill"
    fill(small_disk)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, out[-3000:]
    assert "Traceback" not in out, out[-4000:]
    assert "cannot be written" in out or "the disk filled up" in out, out[-3000:]
    assert not list(small_disk.rglob("*.tmp")), "a partial checkpoint was left behind"

    (small_disk / "filler").unlink()
    again = run_module("sweeps.train", args, small_disk, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert_final(small_disk, name)
