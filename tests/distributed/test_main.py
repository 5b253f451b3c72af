"""``python -m smallfoot.distributed``: one-line errors, and a compressed-averaging run under torchrun."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smallfoot.distributed.__main__ import main


def test_a_missing_config_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.toml")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"error: config file {tmp_path / 'none.toml'} not found"
    )


@pytest.mark.slow
def test_torchrun_runs_compressed_averaging_on_two_ranks(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'dataset = "checkerboard"\nmodel = "mlp"\nepochs = 2\nbatch_size = 64\ndevice = "cpu"\n'
        "train_limit = 1024\ntest_limit = 512\n"
        f'out_dir = "{tmp_path}"\nrun_name = "avg"\nprogress = false\nmeasure_memory = false\n'
    )
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "smallfoot.distributed"]
        + ["--config", str(config), "--sync", "average"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["world_size"] == 2 and summary["sync"] == "average"
    assert summary["compression"]["last_sync"]["bits_per_value"] < 32
    assert json.loads((tmp_path / "avg" / "summary.json").read_text()) == summary
