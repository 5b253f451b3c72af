"""``run_ranks``: start worker processes on the loopback interface, torchrun-style, and collect
what each rank saved; every process is killed when the time is up or the test ends.

The time limit guards against hangs, not speed: it is generous because the test machine may be
shared by many jobs (each test takes 10-25 s of wall time on a quiet 2-core machine)."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_worker.py")


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1, free a moment ago and below the system's
    ephemeral range: the ranks' own connections (gloo opens many) take ephemeral ports, and a
    rendezvous port handed out from that range could be taken by one of them before a later
    process group binds it."""
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in chosen:
            chosen.append(port)
    return chosen


@pytest.fixture
def run_ranks(tmp_path):
    def run(
        scenario: str, nproc: int = 2, timeout: float = 150.0, killed: tuple[int, ...] = ()
    ) -> list[dict | None]:
        """Each rank's saved result; the ranks in ``killed`` must die of SIGKILL (their result
        is None)."""
        master, second, third = free_ports(3)
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master),
            # for workers that start further process groups
            "SECOND_PORT": str(second),
            "THIRD_PORT": str(third),
            "WORLD_SIZE": str(nproc),
            "OMP_NUM_THREADS": "1",
        }
        procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(tmp_path)],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for rank in range(nproc)
        ]
        deadline = time.monotonic() + timeout
        outputs, timed_out = [], False
        for p in procs:
            try:
                outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                timed_out = True
                for q in procs:
                    if q.poll() is None:
                        q.kill()
                outputs.append(p.communicate()[0])
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        expected = [-signal.SIGKILL if rank in killed else 0 for rank in range(nproc)]
        codes = [p.returncode for p in procs]
        report = "\n".join(
            f"rank {rank} exit {code}:\n{out.decode()[-3000:]}"
            for rank, (code, out) in enumerate(zip(codes, outputs, strict=True))
        )
        assert not timed_out and codes == expected, (
            f"{'timed out' if timed_out else 'failed'} (expected exits {expected}):\n{report}"
        )
        return [
            None if r in killed else torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
            for r in range(nproc)
        ]

    return run
