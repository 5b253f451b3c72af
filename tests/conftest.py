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
