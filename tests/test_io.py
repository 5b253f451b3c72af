import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from smallfoot._io import atomic_torch_save, atomic_write_json


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"a": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": Unserialisable()})
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_kill_mid_write_leaves_old_checkpoint_valid(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    child = textwrap.dedent(f"""
        import torch, sys
        from smallfoot._io import atomic_torch_save
        big = torch.zeros(64 * 2**20 // 4)
        print("ready", flush=True)
        while True:
            atomic_torch_save({{"epoch": 2, "w": big}}, {str(path)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == b"ready"
    # wait until a temporary file is being written, then kill the writer mid-write
    for _ in range(2000):
        if any(p.name.startswith(".checkpoint.pt.") for p in tmp_path.iterdir()):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = torch.load(path, weights_only=False)
    assert state["epoch"] in (1, 2)  # the old file, or a complete new one, never a torn one
