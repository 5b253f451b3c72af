"""``--method reversible``: the model that trains, its width, the input it needs, compare's adaptation."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, TrainingError
from smallfoot.methods import get_method
from smallfoot.reversible import RevSequence
from smallfoot.reversible.method import WIDTH_STEP, parameter_count
from smallfoot.runner import run_training
from smallfoot.testing import check_grad_parity


def ctx(model="cnn4", shape=(1, 8, 8), **model_options):
    config = RunConfig(model=model, model_options=model_options)
    return SimpleNamespace(config=config, input_shape=shape, num_classes=10)


def small_run(tmp_path, **fields):
    """A one-epoch ``--method reversible`` run on a few images (``fields`` override)."""
    values = dict(dataset="fashion-mnist", model="cnn4", method="reversible", epochs=1,
                  batch_size=16, train_limit=32, test_limit=16, out_dir=str(tmp_path),
                  progress=False, measure_memory=False)  # fmt: skip
    return RunConfig(**{**values, **fields})


def fashion_config(tmp_path, **data_options):
    return small_run(tmp_path, data_options=data_options)


def test_refuses_28x28_images_with_advice_that_works(tmp_path):
    with pytest.raises(ConfigError, match=r"got 28x28: add --data-opt pad_to=32$"):
        run_training(fashion_config(tmp_path))
    summary = run_training(fashion_config(tmp_path, pad_to=32))
    assert summary["model"] == "revnet18"  # what trained, not --model
    cnn4 = parameter_count("cnn4", (1, 32, 32), 10)
    assert abs(summary["parameters"] / cnn4 - 1) < 0.1


@pytest.mark.parametrize("variant", ["revnet", "irevnet", "layerwise", "hybrid"])
def test_default_width_has_the_parameter_count_closest_to_the_model(variant):
    method = get_method("reversible", {"variant": variant})
    context = ctx(widths=[8, 16, 16, 32])  # --model-opt options count too
    width, step = method.width(context), WIDTH_STEP[variant]
    target = parameter_count("cnn4", (1, 8, 8), 10, widths=[8, 16, 16, 32])

    def miss(w):
        return abs(
            parameter_count(method.model_name(), (1, 8, 8), 10, **method.model_options(w)) - target
        )

    assert width % step == 0
    assert miss(width) <= miss(width + step)
    assert width == step or miss(width) <= miss(width - step)


def test_explicit_width_wins_and_an_unbuildable_model_asks_for_one():
    assert get_method("reversible", {"width": "6"}).width(ctx(model="resnet18")) == 6
    with pytest.raises(ConfigError, match="--width"):
        get_method("reversible").width(ctx(model="resnet18"))  # resnet18 needs 16x16 or more


def test_check_run_refuses_other_shapes():
    with pytest.raises(ConfigError, match="--data-opt pad_to=16"):
        get_method("reversible").check_run(ctx(shape=(3, 12, 9)))
    with pytest.raises(ConfigError, match="needs images"):
        get_method("reversible").check_run(ctx(shape=(64,)))


def test_adapt_pads_and_notes_the_model_swap_without_changing_the_config():
    base = RunConfig(dataset="fashion-mnist", model="cnn4", data_options={"classes": [0, 1]})
    config, notes = get_method("reversible").adapt(base, (1, 28, 28))
    assert config.data_options == {"classes": [0, 1], "pad_to": 32}
    assert base.data_options == {"classes": [0, 1]}
    assert len(notes) == 2
    assert "revnet18" in notes[0] and "cnn4" in notes[0]
    assert "pad_to=32" in notes[1]
    get_method("reversible").check_run(ctx(shape=(1, 32, 32)))  # what the padding gives

    config, notes = get_method("reversible", {"variant": "hybrid"}).adapt(base, (1, 32, 32))
    assert config == base and len(notes) == 1 and "hybrid18" in notes[0]
    same = RunConfig(model="revnet18")
    assert get_method("reversible").adapt(same, (3, 32, 32)) == (same, [])


def built(variant: str, activations: str, dtype: torch.dtype) -> torch.nn.Module:
    """The method's model for a 1x16x16 input at width 8, seeded, in ``dtype``."""
    method = get_method(
        "reversible", {"variant": variant, "width": "8", "activations": activations}
    )
    torch.manual_seed(0)
    return method.build_model(ctx(shape=(1, 16, 16))).to(dtype)


def gradient_gap(variant: str, dtype: torch.dtype) -> float:
    """Largest difference between the stored and reconstructed runs of one step (outputs,
    gradients, buffers), same weights and batch."""
    stored, rebuilt = built(variant, "stored", dtype), built(variant, "reconstructed", dtype)
    assert not any(m.memory_free for m in stored.modules() if isinstance(m, RevSequence))
    assert all(m.memory_free for m in rebuilt.modules() if isinstance(m, RevSequence))
    torch.manual_seed(1)
    x = torch.randn(8, 1, 16, 16, dtype=dtype)
    return check_grad_parity(stored, rebuilt, x, atol=float("inf"))


def test_stored_and_reconstructed_activations_differ_only_by_reconstruction_error():
    gaps = {v: gradient_gap(v, torch.float32) for v in ("irevnet", "layerwise", "hybrid")}
    for variant, gap in gaps.items():
        assert gradient_gap(variant, torch.float64) < 1e-9  # the same computation
        assert 0 < gap < float("inf")  # float32: the inverses' rounding, and only that
    assert gaps["hybrid"] < gaps["layerwise"]  # layer-wise inverses amplify it


def test_activations_option_is_a_cli_flag(tmp_path):
    config = dataclasses.replace(
        fashion_config(tmp_path, pad_to=32), method_options={"activations": "stored"}
    )
    assert run_training(config)["model"] == "revnet18"
    with pytest.raises(ConfigError, match="activations"):
        get_method("reversible", {"activations": "ideal"})


def test_a_reconstruction_lost_to_rounding_stops_before_the_update_and_says_so(tmp_path):
    """A layer-wise invertible net at slope 0.1 amplifies float32 rounding tenfold per Leaky
    ReLU inverse: its first step's gradients are NaN under a finite loss (paper, figure 11)."""
    config = small_run(
        tmp_path,
        dataset="digits",
        data_options={"pad_to": 16},
        model="resnet18",
        method_options={"variant": "layerwise", "width": 6, "negative_slope": 0.1},
        batch_size=64,
        train_limit=64,
    )
    with pytest.raises(
        TrainingError,
        match=r"gradients became non-finite at epoch 1, step 0 with a finite loss .*"
        r"reconstructed activations can be lost to rounding error.*--activations stored",
    ):
        run_training(config)
    stored = {**config.method_options, "activations": "stored"}
    summary = run_training(dataclasses.replace(config, method_options=stored))
    assert summary["epochs"] == 1
