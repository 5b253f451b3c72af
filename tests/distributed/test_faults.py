"""Faults: a rank killed mid-run stops the others within a bounded time with one line naming
it, and ``--resume`` continues from the last checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SMALLFOOT = [str(Path(sys.executable).with_name("smallfoot"))]


def test_a_rank_that_dies_stops_its_peer_with_one_line_naming_it(run_ranks, tmp_path):
    survivor, dead = run_ranks("lost_rank", killed=(1,))
    assert dead is None
    assert survivor["error"] == (
        "data-parallel run stopped: rank 0 lost rank 1, which died or hung "
        f"({survivor['error'].split('(', 1)[1].split(')')[0]}); continue from its last "
        f"checkpoint with --resume {tmp_path / 'run'} --nproc 2"
    )
    assert "Connection" in survivor["error"] or "timed out" in survivor["error"]
    assert survivor["seconds"] < 60  # the bound is gloo's notice of the closed socket


def _workers(launcher: int) -> list[int]:
    """The launcher's worker processes (torch's spawn children), oldest first: rank 0, 1, ..."""
    children = []
    for task in os.listdir(f"/proc/{launcher}/task"):
        children += Path(f"/proc/{launcher}/task/{task}/children").read_text().split()
    return sorted(
        int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


def _start_two_ranks(tmp_path: Path, epochs: int, *flags: str) -> subprocess.Popen:
    """``smallfoot train --nproc 2`` on checkerboard points into ``tmp_path/run``, returned once
    its first checkpoint exists."""
    command = [*SMALLFOOT, "train", "--dataset", "checkerboard", "--model", "mlp"]
    command += ["--batch-size", "64", "--train-limit", "4096", "--test-limit", "256"]
    command += ["--epochs", str(epochs), "--nproc", "2", *flags, "--no-progress", "--no-memory"]
    command += ["--out-dir", str(tmp_path), "--run-name", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOGLEVEL", None)
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoint.pt").exists():
        if launcher.poll() is not None or time.monotonic() > deadline:
            launcher.kill()
            raise AssertionError(launcher.communicate()[1])
        time.sleep(0.02)
    return launcher


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers through /proc")
def test_train_nproc_stops_when_a_rank_is_killed_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOGLEVEL", None)
    launcher = _start_two_ranks(tmp_path, 4)
    try:
        os.kill(_workers(launcher.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=60)
        stopped = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
    done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 4, "the run ended before rank 1 was killed"
    assert launcher.returncode == 2 and stopped < 60
    assert err.strip().splitlines() == [
        f"error: data-parallel run stopped: rank 1 failed (Signal 9 (SIGKILL) received by PID "
        f"{_pid(err)}); the other ranks were stopped; continue from its last checkpoint with "
        f"--resume {run_dir} --nproc 2"
    ]

    resumed = subprocess.run(
        [*SMALLFOOT, "train", "--resume", str(run_dir), "--nproc", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] and summary["epochs"] == 4 and summary["world_size"] == 2
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]


def _pid(err: str) -> str:
    return err.split("received by PID ")[1].split(")")[0]


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_with_one_line_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    launcher = _start_two_ranks(tmp_path, 50, "--sync", "average-ef")
    try:
        launcher.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130
    assert err.strip().splitlines() == [
        "interrupted: data-parallel run stopped by SIGINT; every rank was stopped; continue "
        f"from its last checkpoint with --resume {run_dir} --nproc 2"
    ]
