"""A registry of model builders: ``build_model(name, input_shape, num_classes, **opts)``."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from smallfoot.errors import ConfigError, UnknownNameError
from smallfoot.plugins import load_plugins
from smallfoot.references import is_reference, resolve_reference


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its name, a one-line description and its builder."""

    name: str
    description: str
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str):
    """Decorator registering ``builder(input_shape, num_classes, **opts) -> nn.Module`` as ``name``."""

    def decorate(builder):
        _REGISTRY[name] = ModelInfo(name, description, builder)
        return builder

    return decorate


def _load_all() -> None:
    # technique packages register their own models (revnet18, fixup_resnet18, ...)
    load_plugins()


def list_models(pattern: str = "*") -> list[ModelInfo]:
    """Registered models whose name matches the glob ``pattern``, sorted by name."""
    _load_all()
    return [info for name, info in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; raises ``UnknownNameError`` listing the choices."""
    if name not in _REGISTRY:
        _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def model_options(name: str) -> list[tuple[str, object]]:
    """``(option, default)`` of each keyword option model ``name``'s builder takes (the
    ``--model-opt KEY=VALUE`` keys), in signature order."""
    params = list(inspect.signature(get_model_info(name).builder).parameters.values())[2:]
    return [
        (p.name, None if p.default is p.empty else p.default)
        for p in params
        if not p.name.startswith("_") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def build_model(name: str, input_shape, num_classes: int, **opts) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (C, H, W) or (D,) and ``num_classes`` outputs.

    Unknown names raise ``UnknownNameError``; options a builder does not take raise ``ConfigError``.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if is_reference(name):
        return build_referenced_model(name, input_shape, num_classes, **opts)
    if name not in _REGISTRY:
        _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("model", name, sorted(_REGISTRY))
    _check_widths(name, opts)
    try:
        return _REGISTRY[name].builder(tuple(int(s) for s in input_shape), num_classes, **opts)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ConfigError(
                f"model {name!r}: {exc}; see `smallfoot models {name}` for its options"
            ) from None
        raise ConfigError(
            f"model {name!r} cannot be built with options {opts}: {exc}; "
            f"see `smallfoot models {name}`"
        ) from None
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model {name!r} cannot be built with options {opts}: {first}; "
            f"see `smallfoot models {name}`"
        ) from None


def build_referenced_model(reference: str, input_shape, num_classes: int, **opts) -> nn.Module:
    """Build a user's model from ``reference`` (``package.module:function``): the function is
    called with ``opts`` as keyword arguments, plus ``num_classes`` and ``input_shape`` (C, H, W)
    when its signature takes them and ``opts`` does not set them. The result must be an
    ``nn.Module`` whose output for one input is ``(1, num_classes)``; anything else raises a
    ``ConfigError`` that says what came back."""
    builder = resolve_reference(reference, "--model")
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    kwargs = dict(opts)
    given = {"num_classes": num_classes, "input_shape": tuple(int(s) for s in input_shape)}
    for key, value in given.items():
        if key in parameters and key not in kwargs:
            kwargs[key] = value
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"--model {reference}: {exc}; pass its options as --model-opt KEY=VALUE"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {reference} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    _check_output(reference, model, given["input_shape"], num_classes)
    return model


def _check_output(reference: str, model: nn.Module, input_shape, num_classes: int) -> None:
    """One input through ``model`` (eval mode, no grad: no running statistic or random stream
    moves) must give ``(1, num_classes)`` logits."""
    parameter = next(model.parameters(), None)
    sample = torch.zeros(
        1, *input_shape, device=parameter.device if parameter is not None else None
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(sample)
    except Exception as exc:  # the user's forward failed on the dataset's input shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"--model {reference} fails on one input of shape {tuple(input_shape)}: {first}"
        ) from None
    finally:
        model.train(was_training)
    shape = tuple(getattr(output, "shape", ()))
    if shape != (1, num_classes):
        raise ConfigError(
            f"--model {reference} gives outputs of shape {shape} for one input, but the loss "
            f"needs (1, {num_classes}) for {num_classes} classes; build it with "
            f"num_classes={num_classes} (e.g. --model-opt num_classes={num_classes})"
        )


def _check_widths(name: str, opts: dict) -> None:
    """Layer sizes (options ``width`` and ``widths``; an empty list is no hidden layer) must
    be positive numbers: a zero width would build a net that trains silently on nothing."""
    for key in ("width", "widths"):
        if key not in opts:
            continue
        value = opts[key]
        values = value if isinstance(value, (list, tuple)) else [value]
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values
        ):
            raise ConfigError(
                f"model {name!r}: {key} must be positive numbers, got {value!r}; "
                f"see `smallfoot models {name}`"
            )


def parameter_count(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters())
