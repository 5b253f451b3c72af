"""Every registered method and every loss trains from its defaults (issue: trustworthy by
default): digits, cnn4, 2 epochs, well above chance, and the summary's memory is the
method's own (what ``smallfoot memory --method NAME`` reports for the same configuration)."""

import pytest

from smallfoot.config import RunConfig, apply_overrides
from smallfoot.errors import ConfigError
from smallfoot.losses import list_losses
from smallfoot.methods import list_methods
from smallfoot.runner import run_training
from smallfoot.runner.compare import base_input_shape, method_config
from smallfoot.runner.step import method_step_memory

BUILTIN_METHODS = [cls.name for cls in list_methods() if not cls.name.startswith("test-")]
MIN_ACCURACY = 0.80  # baseline reaches >= 0.95 here


def digits_base(tmp_path, **overrides) -> RunConfig:
    config = RunConfig(dataset="digits", model="cnn4", epochs=2, progress=False)
    return apply_overrides(config, {"out_dir": str(tmp_path), **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_method_trains_from_its_defaults(tmp_path, name):
    base = digits_base(tmp_path)
    config, notes = method_config(base, name, base_input_shape(base))
    summary = run_training(config)
    assert summary["test_accuracy"] >= MIN_ACCURACY, (name, notes, summary["test_accuracy"])
    assert summary["method"] == name
    memory = summary["memory"]
    step = dict(
        method=name,
        method_options=config.method_options,
        model_options=config.model_options,
        classes=10,
    )
    if (
        "saved_activations" not in memory
    ):  # no backprop step (closed form): nor may memory meter one
        with pytest.raises(ConfigError):
            method_step_memory(config.model, (1, 8, 8), config.batch_size, **step)
        return
    own = method_step_memory(
        config.model, tuple(memory["input_shape"]), memory["batch"], **step
    ).to_dict()
    assert own.get("stage") == memory.get("stage"), name
    assert own["saved_activations"] == pytest.approx(memory["saved_activations"], rel=0.05), name
    assert own["peak"] == pytest.approx(memory["peak"], rel=0.10), name


@pytest.mark.slow
@pytest.mark.parametrize("loss", [info.name for info in list_losses()])
def test_loss_trains_from_its_defaults(tmp_path, loss):
    summary = run_training(digits_base(tmp_path, loss=loss))
    assert summary["test_accuracy"] >= MIN_ACCURACY, (loss, summary["test_accuracy"])
