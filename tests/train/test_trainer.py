import copy
import json

import pytest
import torch
from torch import nn

from smallfoot.config import RunConfig, load_config
from smallfoot.data import load_dataset
from smallfoot.errors import ConfigError, TrainingError, TrainingInterrupted
from smallfoot.runner import run_training
from smallfoot.runner.run import new_run_dir
from smallfoot.train import Callback, TrainConfig, Trainer


def tiny_config(tmp_path, **overrides):
    values = dict(
        dataset="synthetic",
        model="mlp",
        epochs=3,
        batch_size=16,
        lr=0.05,
        out_dir=str(tmp_path),
        progress=False,
        measure_memory=False,
        model_options={"widths": [16], "dropout": 0.2},
        data_options={"shape": [1, 6, 6], "num_classes": 3, "size": 64},
        augment=True,
    )
    values.update(overrides)
    return RunConfig(**values)


def final_weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def test_run_directory_contents(tmp_path):
    summary = run_training(tiny_config(tmp_path, run_name="a"))
    run_dir = tmp_path / "a"
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
    }
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    saved = json.loads((run_dir / "summary.json").read_text())
    for key in ("test_accuracy", "train_accuracy", "test_loss", "seconds", "epochs", "parameters"):
        assert key in saved
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["epochs"] == 3
    assert summary == saved


def test_resume_gives_the_same_final_weights(tmp_path, monkeypatch, interrupt_at):
    run_training(tiny_config(tmp_path, run_name="straight"))
    # interrupt the second run at the start of epoch 3 (index 2), then resume it
    original = interrupt_at(2)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_training(tiny_config(tmp_path, run_name="resumed"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["epoch"] == 2
    summary = run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["epochs"] == 3 and summary["resumed"] is True
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=32)
    model = nn.Sequential(nn.Linear(4, 2))

    class PoisonAfterFirstEpoch(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 1:
                trainer.train_set.x[0, 0] = float("nan")

    trainer = Trainer(
        model,
        train,
        None,
        TrainConfig(epochs=3, batch_size=8),
        callbacks=[PoisonAfterFirstEpoch()],
        run_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(
        TrainingError, match="loss became nan.*epoch 1 is kept.*--resume .* --lr 0.005"
    ):
        trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN gradient: a backward pass that loses its numbers (as a
    reconstruction with too much rounding error does) under a finite loss."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class _LosesGradients(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.second(_NaNGradient.apply(self.first(x)))


def test_non_finite_gradients_stop_before_the_weights_change():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=32)
    model = _LosesGradients()
    before = copy.deepcopy(model.state_dict())
    trainer = Trainer(model, train, None, TrainConfig(epochs=1, batch_size=8), progress=False)
    with pytest.raises(
        TrainingError,
        match=r"gradients became non-finite at epoch 1, step 0 with a finite loss .*: the "
        r"backward pass produced them; the weights were not updated",
    ):
        trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_callback_hooks_order_and_metrics():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=20)
    calls = []

    class Recorder(Callback):
        def on_train_start(self, t):
            calls.append("start")

        def on_epoch_start(self, t, epoch):
            calls.append(f"epoch{epoch}")

        def on_after_backward(self, t):
            assert all(p.grad is not None for p in t.model.parameters())
            calls.append("backward")

        def on_epoch_end(self, t, epoch, metrics):
            metrics["extra"] = epoch
            calls.append("end")

        def on_train_end(self, t):
            calls.append("done")

    trainer = Trainer(
        nn.Linear(4, 2),
        train,
        train,
        TrainConfig(epochs=2, batch_size=10),
        callbacks=[Recorder()],
        progress=False,
    )
    metrics = trainer.fit()
    assert calls == [
        "start",
        "epoch0",
        "backward",
        "backward",
        "end",
        "epoch1",
        "backward",
        "backward",
        "end",
        "done",
    ]
    assert metrics["extra"] == 1 and "test_accuracy" in metrics


def test_closure_optimizer_gets_a_loss_closure():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=20)
    seen = []

    class ClosureSGD(torch.optim.SGD):
        needs_closure = True

        def step(self, closure=None):
            seen.append(float(closure()))
            return super().step()

    model = nn.Linear(4, 2)
    trainer = Trainer(
        model,
        train,
        None,
        TrainConfig(epochs=1, batch_size=10),
        optimizer=ClosureSGD(model.parameters(), lr=0.1),
        progress=False,
    )
    trainer.fit()
    assert len(seen) == 2 and all(v > 0 for v in seen)


def test_closure_re_evaluations_do_not_update_batch_norm_statistics_again():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=20)

    class ClosureTwiceSGD(torch.optim.SGD):
        needs_closure = True

        def step(self, closure=None):
            closure(), closure()  # like a line search evaluating trial points
            return super().step()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    reference = copy.deepcopy(model)
    trainer = Trainer(
        model,
        train,
        None,
        TrainConfig(epochs=1, batch_size=20),
        optimizer=ClosureTwiceSGD(model.parameters(), lr=0.1),
        progress=False,
    )
    trainer.fit()
    reference(train.x)  # one training-mode forward on the one batch (statistics ignore order)
    assert int(model[1].num_batches_tracked) == 1
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)


def test_learns_a_separable_problem():
    torch.manual_seed(0)
    data = load_dataset("synthetic", "train", shape=(8,), num_classes=3, size=300, noise=0.3)
    trainer = Trainer(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
        data,
        data,
        TrainConfig(epochs=5, batch_size=32, lr=0.1),
        progress=False,
    )
    assert trainer.fit()["test_accuracy"] > 0.95


@pytest.mark.parametrize("schedule", ["constant", "cosine", "multistep"])
def test_schedules(schedule):
    data = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=40)
    trainer = Trainer(
        nn.Linear(4, 2),
        data,
        None,
        TrainConfig(epochs=4, batch_size=10, schedule=schedule, lr=1.0),
        progress=False,
    )
    trainer.fit()
    final = trainer.optimizer.param_groups[0]["lr"]
    assert {"constant": 1.0, "cosine": 0.0, "multistep": 0.01}[schedule] == pytest.approx(
        final, abs=1e-9
    )


def test_adamw_and_determinism(tmp_path):
    a = run_training(tiny_config(tmp_path, optimizer="adamw", lr=0.01, run_name="x"))
    b = run_training(tiny_config(tmp_path, optimizer="adamw", lr=0.01, run_name="y"))
    assert a["test_loss"] == b["test_loss"]
    wa, wb = final_weights(tmp_path / "x"), final_weights(tmp_path / "y")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


NOISY_DATA = """
import torch

class Noisy(torch.utils.data.Dataset):
    # a transform drawing from torch's RNG in __getitem__, as torchvision's random ones do
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index] + 0.1 * torch.randn(self.x[index].shape), int(self.y[index])

def noisy(n=64):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 6, 6, generator=g) + y.view(-1, 1, 1, 1)
    return Noisy(x[:48], y[:48]), Noisy(x[48:], y[48:])
"""


def test_workers_train_the_same_weights_and_may_change_on_resume(
    tmp_path, monkeypatch, interrupt_at
):
    (tmp_path / "noisy_data.py").write_text(NOISY_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    lazy = {"dataset": "noisy_data:noisy", "data_options": {"in_memory": False}}
    run_training(tiny_config(tmp_path, run_name="inline", **lazy))
    original = interrupt_at(2)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(tmp_path, run_name="workers", workers=2, **lazy))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(
        RunConfig(), resume_dir=tmp_path / "workers", resume_overrides={"workers": 1}
    )
    assert summary["epochs"] == 3
    inline, workers = final_weights(tmp_path / "inline"), final_weights(tmp_path / "workers")
    assert all(torch.equal(inline[k], workers[k]) for k in inline)


def test_interrupt_in_the_first_epoch_says_there_is_no_checkpoint_and_resume_restarts(
    tmp_path, monkeypatch, interrupt_at
):
    original = interrupt_at(0)
    with pytest.raises(
        TrainingInterrupted, match="no checkpoint yet.*starts the run again"
    ) as info:
        run_training(tiny_config(tmp_path, run_name="r"))
    assert "kept" not in str(info.value)
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(RunConfig(), resume_dir=tmp_path / "r")
    assert summary["epochs"] == 3 and "resumed" not in summary
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3


def test_interrupt_later_names_the_checkpoint_epoch(tmp_path, interrupt_at):
    interrupt_at(1)
    with pytest.raises(TrainingInterrupted, match="checkpoint after epoch 1 is kept"):
        run_training(tiny_config(tmp_path, run_name="r"))


def test_resume_with_more_epochs_and_a_new_learning_rate(tmp_path, monkeypatch, interrupt_at):
    original = interrupt_at(1)
    with pytest.raises(TrainingInterrupted):
        run_training(tiny_config(tmp_path, run_name="r", schedule="constant"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(
        RunConfig(), resume_dir=tmp_path / "r", resume_overrides={"epochs": 5, "lr": 0.001}
    )
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["lr"] for line in lines] == pytest.approx([0.05] + [0.001] * 4)
    assert summary["epochs"] == 5
    assert "epochs = 5" in (tmp_path / "r" / "config.toml").read_text()


def test_resume_refuses_fewer_epochs_than_done(tmp_path):
    run_training(tiny_config(tmp_path, run_name="r"))
    with pytest.raises(ConfigError, match="after epoch 3.*--epochs 3 or more"):
        run_training(RunConfig(), resume_dir=tmp_path / "r", resume_overrides={"epochs": 2})


def test_resume_refuses_other_overrides(tmp_path):
    run_training(tiny_config(tmp_path, run_name="r", epochs=1))
    with pytest.raises(ConfigError, match="cannot change --batch-size, --momentum; it takes only"):
        run_training(
            RunConfig(),
            resume_dir=tmp_path / "r",
            resume_overrides={"batch_size": 3, "momentum": 0.5},
        )


def test_corrupt_checkpoint_is_refused(tmp_path):
    run_training(tiny_config(tmp_path, run_name="r", epochs=1))
    path = tmp_path / "r" / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[-200:-100] = bytes(b ^ 0xFF for b in data[-200:-100])
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        run_training(RunConfig(), resume_dir=tmp_path / "r", resume_overrides={"epochs": 2})


def test_relative_data_root_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_training(tiny_config(tmp_path, run_name="r", epochs=1, data_root="data"))
    saved = load_config(tmp_path / "r" / "config.toml")
    assert saved.data_root == str(tmp_path / "data")


def test_default_run_names_are_unique_within_a_second(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    dirs = {new_run_dir(config) for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() for d in dirs)


def test_fixup_scalars_train_at_a_tenth_of_the_rate_through_the_schedule():
    from smallfoot.models import build_model
    from smallfoot.models.fixup import Bias, Scale
    from smallfoot.train.trainer import make_optimizer, make_scheduler

    model = build_model("fixup_resnet18", (1, 16, 16), 10, width=4)
    optimizer = make_optimizer(model, TrainConfig(lr=0.1, schedule="cosine", epochs=2))
    main, scalars = optimizer.param_groups
    assert main["lr"] == 0.1 and scalars["lr"] == pytest.approx(0.01)
    expected = {
        id(p)
        for m in model.modules()
        if isinstance(m, (Bias, Scale))
        for p in m.parameters(recurse=False)
    }
    assert {id(p) for p in scalars["params"]} == expected
    assert len(main["params"]) + len(scalars["params"]) == len(list(model.parameters()))
    scheduler = make_scheduler(optimizer, TrainConfig(schedule="cosine", epochs=2), 5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert scalars["lr"] == pytest.approx(main["lr"] / 10)
    plain = make_optimizer(build_model("mlp", (4,), 3, widths=[8]), TrainConfig(lr=0.1))
    assert len(plain.param_groups) == 1
