"""GradientRMS: per-epoch RMS of error gradients at the output and every second hidden layer."""

import math

import pytest
import torch
from torch import nn

from smallfoot.data import ArrayDataset
from smallfoot.errors import ConfigError
from smallfoot.losses import build_loss, encode_targets
from smallfoot.train import TrainConfig, Trainer
from smallfoot.train.gradient_rms import GradientRMS, weight_layers


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip


def test_chooses_output_and_every_second_hidden_layer():
    model = tiny_mlp()
    callback = GradientRMS(model, every=2)
    assert [name for name, _ in callback.layers] == ["output", "2", "6"]
    assert [name for name, _ in weight_layers(model)] == ["0", "2", "4", "6", "8"]
    with pytest.raises(ConfigError):
        GradientRMS(model, every=0)
    with pytest.raises(ConfigError):
        GradientRMS(nn.ReLU())


def test_output_rms_equals_rms_of_y_minus_t():
    """One full-batch epoch with exp-GA: the output RMS is the RMS of the per-sample y - t."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    data = ArrayDataset(x, y, 3, "toy")
    model = tiny_mlp()
    loss_fn, predict = build_loss("exp-ga", 3, alpha=0.5, target_values=(0, 2), scale=1.0)
    with torch.no_grad():
        delta = 0.5 * torch.exp(model(x).double()) - encode_targets(y, 3, (0, 2), torch.float64)
    callback = GradientRMS(model)
    config = TrainConfig(epochs=1, batch_size=16, lr=0.0, momentum=0.0, weight_decay=0.0)
    trainer = Trainer(
        model, data, None, config, loss_fn, callbacks=[callback], progress=False, predict_fn=predict
    )
    metrics = trainer.fit()
    rms = metrics["grad_rms"]
    assert set(rms) == {"output", "2", "6"}
    assert math.isclose(rms["output"], float(delta.pow(2).mean().sqrt()), rel_tol=1e-5)
    assert all(value > 0 for value in rms.values())
    assert callback.handles == []  # hooks removed at the end
    assert not model[8]._forward_hooks
