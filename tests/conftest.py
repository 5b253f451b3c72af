"""Shared test settings: a small thread count so parallel suites stay predictable on 2 cores,
and property tests that draw the same examples on every run (a CI failure reproduces)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(2)
settings.register_profile("smallfoot", derandomize=True, print_blob=True)
settings.load_profile("smallfoot")


@pytest.fixture
def counting_inputs():
    """The class of lazily read inputs (``LazyInputs``) over a tensor ``x`` that records the
    size of every read in ``.reads`` (read as float32)."""
    from smallfoot.data import LazyInputs

    class CountingInputs(LazyInputs):
        def __init__(self, x):
            self.x, self.item_shape, self.reads = x, tuple(x.shape[1:]), []

        def __len__(self):
            return len(self.x)

        def read(self, indices):
            self.reads.append(len(indices))
            return self.x[torch.as_tensor(indices)].float()

    return CountingInputs


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """``run_cli(*args)`` runs ``smallfoot ARGS`` through the installed entry point (``main``, so
    one-line errors and exit codes are as a user sees them) and returns (exit code, stdout,
    stderr)."""
    from smallfoot import cli as cli_module

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["smallfoot", *args])
        code = 0
        try:
            cli_module.main()
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(epoch, stage=None)`` makes ``Trainer.run_epoch`` raise KeyboardInterrupt
    (Ctrl-C) when it starts epoch index ``epoch`` (only the Trainer whose run directory is named
    ``stage``, when given) and returns the original ``run_epoch``, to restore with
    ``monkeypatch.setattr(Trainer, "run_epoch", original)`` before resuming."""
    from smallfoot.train import Trainer

    original = Trainer.run_epoch

    def arm(epoch: int, stage: str | None = None):
        def run_epoch(self, index):
            in_stage = stage is None or (self.run_dir is not None and self.run_dir.name == stage)
            if index == epoch and in_stage:
                raise KeyboardInterrupt
            return original(self, index)

        monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
        return original

    return arm


FILE_DATASET = textwrap.dedent("""
    import os
    import numpy as np
    import torch

    class FileRows(torch.utils.data.Dataset):
        # rows of float32 read from a file with os.pread (nothing mapped, nothing cached by us)
        def __init__(self, path, n, dim, classes=4):
            self.path, self.n, self.dim = path, n, dim
            self.targets = [i % classes for i in range(n)]

        def __len__(self):
            return self.n

        def __getitem__(self, index):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                data = os.pread(fd, 4 * self.dim, 4 * self.dim * index)
            finally:
                os.close(fd)
            return torch.from_numpy(np.frombuffer(data, np.float32).copy()), self.targets[index]

    def file_rows(path, n, dim):
        rows = FileRows(path, n, dim)
        return rows, FileRows(path, min(n, 512), dim)
""")


PEAK_RSS = (
    "import resource, sys\n"
    "from smallfoot.cli import main\n"
    "sys.argv = ['smallfoot', *sys.argv[1:]]\n"
    "try:\n    main()\n"
    "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


@pytest.fixture(scope="module")
def file_rows_peak_kib(tmp_path_factory):
    """``peak_kib(args, n)``: the peak resident memory (KiB, ``getrusage`` in a fresh process)
    of ``smallfoot train ARGS`` on the first ``n`` rows of a 128 MiB file of 16,384 float32
    rows of 8 KiB (4 classes, class means apart), read a row at a time through a user's
    map-style dataset with ``in_memory=false`` (512 test rows)."""
    root = tmp_path_factory.mktemp("file_rows")
    (root / "file_sets.py").write_text(FILE_DATASET)
    dim, rows_total = 2048, 16384
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(rows_total) % 4
    with (root / "rows.f32").open("wb") as handle:
        for start in range(0, rows_total, 1024):
            rows = torch.randn(1024, dim, generator=generator)
            rows += labels[start : start + 1024, None].float()
            handle.write(rows.numpy().tobytes())

    def peak_kib(args: tuple[str, ...], n: int) -> int:
        command = [
            sys.executable, "-c", PEAK_RSS, "train", "--dataset", "file_sets:file_rows",
            "--data-opt", f"path={root / 'rows.f32'}", "--data-opt", f"n={n}",
            "--data-opt", f"dim={dim}", "--data-opt", "in_memory=false",
            "--out-dir", str(root / "runs"), *args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.rsplit("PEAK_KIB", 1)[1])

    return peak_kib
