"""Exceptions for problems a user can cause; every message says what was wrong and what to do."""

from __future__ import annotations


class SmallfootError(Exception):
    """Base class of smallfoot's user-facing errors (the CLI prints them in one line, exit 2)."""


class ConfigError(SmallfootError):
    """A configuration value or key is invalid."""


class UnknownNameError(ConfigError):
    """A name (dataset, model, method, benchmark, ...) is not registered.

    Attributes:
        kind: what was looked up, e.g. ``"model"``.
        name: the unknown name.
        choices: the registered names.
    """

    def __init__(self, kind: str, name: str, choices: list[str] | tuple[str, ...]):
        self.kind, self.name, self.choices = kind, name, list(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")


class DatasetError(SmallfootError):
    """A data file is missing, corrupt or inconsistent."""


class ShapeError(SmallfootError):
    """An input shape does not fit a model or operation."""


class TrainingError(SmallfootError):
    """Training cannot continue (e.g. the loss became NaN or infinite)."""


class BudgetError(SmallfootError):
    """A memory budget cannot be met by any configuration searched."""


class InvertibilityError(SmallfootError):
    """A module cannot be inverted, or an invertible chain was misused."""


class TrainingInterrupted(SmallfootError):
    """Training was interrupted (Ctrl-C); the last epoch's checkpoint is kept for ``--resume``."""
