import pytest
import torch

from smallfoot.data import load_dataset
from smallfoot.errors import ConfigError
from smallfoot.facto import (
    FactoLinear,
    FactoSchedule,
    convert,
    decay_amount,
    direct_decay,
    factorized_layers,
)
from smallfoot.facto.schedule import drop_epochs, step_scheduler
from smallfoot.models import build_model
from smallfoot.train import Callback, TrainConfig, Trainer


def tiny_trainer(schedule, epochs=3, recorder=None, weight_decay=5e-4):
    torch.manual_seed(0)
    data = dict(shape=(1, 8, 8), num_classes=3, size=48)
    train = load_dataset("synthetic", "train", **data)
    test = load_dataset("synthetic", "test", **data)
    model = build_model("cnn4", (1, 8, 8), 3, widths=(4, 8, 8, 8), batch_norm=False)
    convert(model, inr=0.5, kernel=2, apply_ratio=1.0, low_rank=False)
    config = TrainConfig(epochs=epochs, batch_size=16, weight_decay=weight_decay)
    callbacks = [schedule] + ([recorder] if recorder else [])
    return Trainer(model, train, test, config, callbacks=callbacks, progress=False)


class Recorder(Callback):
    """Snapshots of the first factorized layer after the schedule's epoch start and each step."""

    def __init__(self):
        self.starts, self.steps = [], []

    def on_epoch_start(self, trainer, epoch):
        layer = factorized_layers(trainer.model)[0]
        self.starts.append((layer.weight.clone(), layer.magnitude.clone(), layer.omega().detach()))

    def on_batch_end(self, trainer, batch_index, loss, output):
        self.steps.append(factorized_layers(trainer.model)[0].weight.clone())


def test_full_rank_then_low_rank_with_merge_every_epoch():
    recorder = Recorder()
    trainer = tiny_trainer(FactoSchedule(frt_epochs=1, direct_decay=False), recorder=recorder)
    trainer.fit()
    phases = [m["facto_phase"] for m in trainer.history]
    assert phases == ["full-rank", "low-rank", "low-rank"]
    assert trainer.history[1]["facto_trainable"] < trainer.history[0]["facto_trainable"]
    # M starts every low-rank epoch at zero (merged and redrawn) ...
    assert all(m.abs().max() == 0 for _, m, _ in recorder.starts[1:])
    # ... and W is frozen inside a low-rank epoch (3 steps per epoch)
    first_lrt = recorder.steps[3:6]
    assert all(torch.equal(w, first_lrt[0]) for w in first_lrt)
    assert not torch.equal(recorder.starts[2][0], recorder.starts[1][0])  # the merge moved W
    # the optimizer keeps state for the magnitudes, none for frozen weights
    for layer in factorized_layers(trainer.model):
        assert layer.weight not in trainer.optimizer.state
        assert layer.magnitude in trainer.optimizer.state


def test_merge_every_two_epochs_keeps_m_between_merges():
    recorder = Recorder()
    schedule = FactoSchedule(frt_epochs=0, merge_every=2, direct_decay=False)
    tiny_trainer(schedule, epochs=3, recorder=recorder).fit()
    norms = [m.abs().max().item() for _, m, _ in recorder.starts]
    assert norms[0] == 0 and norms[1] > 0 and norms[2] == 0


def test_direct_decay_is_eq_14():
    model = build_model("cnn4", (1, 8, 8), 3, widths=(4, 8, 8, 8), batch_norm=False).double()
    convert(model, apply_ratio=1.0)
    layer = factorized_layers(model)[0]
    with torch.no_grad():
        layer.magnitude.normal_()
    expected = layer.weight - 0.01 * layer.omega()
    direct_decay(model, 0.01)
    torch.testing.assert_close(layer.weight, expected.detach(), rtol=1e-12, atol=1e-12)


def test_direct_decay_moves_w_every_low_rank_step():
    recorder = Recorder()
    tiny_trainer(FactoSchedule(frt_epochs=1), recorder=recorder).fit()
    first_lrt = recorder.steps[3:6]
    assert not torch.equal(first_lrt[0], first_lrt[1])


def test_schedule_checks_its_arguments_and_the_model():
    with pytest.raises(ConfigError):
        FactoSchedule(frt_epochs=-1)
    data = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=8)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    trainer = Trainer(
        model,
        data,
        None,
        TrainConfig(epochs=1),
        progress=False,
        callbacks=[FactoSchedule(frt_epochs=0)],
    )
    with pytest.raises(ConfigError, match="convert"):
        trainer.fit()


def test_drops_fall_on_epoch_boundaries():
    assert drop_epochs(100, (0.3, 0.6, 0.9)) == [30, 60, 90]  # the paper's schedule
    assert drop_epochs(10, (0.3, 0.6, 0.9)) == [3, 6, 9]  # not 4: 0.3 * 10 > 3 in floats
    assert drop_epochs(6, (0.3, 0.6, 0.9)) == [2, 4]
    assert drop_epochs(2, (0.3, 0.6, 0.9)) == [1]
    assert drop_epochs(3, (0.01,)) == [1]


def test_step_scheduler_is_constant_within_an_epoch():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = step_scheduler(optimizer, epochs=4, steps_per_epoch=3, drops=(0.5, 0.75))
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5] * 6 + [0.05] * 3 + [0.005] * 3)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_eq_14_decays_omega_as_full_rank_training_decays_w(kind):
    # With a zero loss gradient, full-rank training shrinks W by its optimizer's weight decay
    # alone; low-rank training shrinks Omega (M = 0) by eq. 14 alone. Both must agree: with
    # SGD momentum 0.9 the decay in the momentum buffer is 10x lr * wd per step.
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 4, bias=False)
    facto = FactoLinear.from_linear(plain, inr=0.5, low_rank=True)
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=1e-3),
    }[kind]
    full, low = make([plain.weight]), make([facto.magnitude])
    for _ in range(1000):
        plain.weight.grad = torch.zeros_like(plain.weight)
        facto.magnitude.grad = torch.zeros_like(facto.magnitude)
        full.step()
        low.step()
        direct_decay(torch.nn.Sequential(facto), decay_amount(low))
    torch.manual_seed(0)
    start = torch.nn.Linear(6, 4, bias=False).weight  # the same draw as ``plain``
    shrink_full = (plain.weight.norm() / start.norm()).log()
    shrink_low = (facto.omega().norm() / start.norm()).log()
    # the momentum buffer needs ~10 steps to fill; over 1000 steps the shrinkage (about e^-1
    # for SGD; e^-0.1 with lambda = lr * wd) agrees within 3%
    assert shrink_low.item() == pytest.approx(shrink_full.item(), rel=0.03)
