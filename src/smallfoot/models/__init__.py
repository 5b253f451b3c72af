"""Baseline models built by name: ``build_model(name, input_shape, num_classes, **opts)``."""

from smallfoot.models import basic, bottleneck, fixup, resnet, vgg  # noqa: F401  (registers the baselines)
from smallfoot.models.registry import (
    ModelInfo,
    build_model,
    get_model_info,
    list_models,
    model_options,
    parameter_count,
    register_model,
)

__all__ = [
    "ModelInfo",
    "build_model",
    "get_model_info",
    "list_models",
    "model_options",
    "parameter_count",
    "register_model",
]
