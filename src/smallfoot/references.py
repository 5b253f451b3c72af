"""Objects named by reference, ``package.module:attribute``, the way torchrun and uvicorn
take them: how ``--model`` and ``--dataset`` accept a user's own builder function."""

from __future__ import annotations

import importlib
from typing import Any

from smallfoot.errors import ConfigError


def is_reference(name: str) -> bool:
    """True when ``name`` is a ``module:attribute`` reference rather than a registered name."""
    return ":" in name


def resolve_reference(reference: str, flag: str) -> Any:
    """The object ``reference`` (``package.module:attribute``, attribute may be dotted) names.

    Raises ``ConfigError`` naming ``flag`` when the reference is malformed, the module cannot be
    imported, or it has no such attribute."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"{flag} {reference!r} must look like package.module:function (e.g. mynets:resnet)"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{flag} {reference!r}: cannot import {module_name!r} ({exc}); check the name and "
            "that its directory is on PYTHONPATH"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"{flag} {reference!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise ConfigError(f"{flag} {reference!r} is a {type(target).__name__}, not a function")
    return target
