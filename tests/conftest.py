"""Shared test settings: a small thread count so parallel suites stay predictable on 2 cores,
and property tests that draw the same examples on every run (a CI failure reproduces)."""

import sys

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(2)
settings.register_profile("smallfoot", derandomize=True, print_blob=True)
settings.load_profile("smallfoot")


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
