"""Peers registered as methods: activation checkpointing and CPU offloading."""

import json

import pytest
import torch
from torch import nn

from smallfoot.alternatives import OFFLOAD_CPU_NOTE, CheckpointSequential, Offloaded, checkpointed
from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError
from smallfoot.memory import measure
from smallfoot.methods import get_method
from smallfoot.runner.run import run_training


def net():
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    ).double()


def grads_after_step(model, x):
    """Input and parameter gradients of one training step, with a fixed dropout seed."""
    torch.manual_seed(7)
    x = x.clone().requires_grad_(True)
    model(x).pow(2).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("policy", ["full", "selective"])
@pytest.mark.parametrize("segments", [1, 2, 3, 9])
def test_checkpoint_matches_autograd_and_updates_running_stats_once(segments, policy):
    torch.manual_seed(0)
    plain = net()
    wrapped = checkpointed(net(), segments, policy)
    wrapped.load_state_dict(plain.state_dict())
    x = torch.randn(8, 6, dtype=torch.float64)
    for a, b in zip(grads_after_step(plain, x), grads_after_step(wrapped, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # running mean/var and num_batches_tracked


def test_checkpoint_segments_and_errors():
    model = checkpointed(net())
    assert isinstance(model, CheckpointSequential) and model.segments == 3  # round(sqrt(9))
    assert model.segment_bounds() == [(0, 3), (3, 6), (6, 9)]
    assert checkpointed(net(), 2).segment_bounds() == [(0, 4), (4, 9)]
    inplace = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True), nn.Linear(2, 2), nn.ReLU())
    assert checkpointed(inplace, 2).segment_bounds() == [(0, 2), (2, 4)]
    with pytest.raises(ConfigError, match="segments must lie"):
        checkpointed(net(), 10)
    with pytest.raises(ConfigError, match="nn.Sequential"):
        checkpointed(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="segments"):
        get_method("checkpoint", {"segments": -1})


def test_checkpoint_keeps_only_segment_inputs():
    torch.manual_seed(0)
    layers = [nn.Linear(32, 32) if i % 2 == 0 else nn.ReLU() for i in range(16)]
    model = nn.Sequential(*layers)
    x = torch.randn(4, 32)
    loss = lambda out, y: out.sum()  # noqa: E731
    base = measure(model, x, loss_fn=loss)
    ckpt = measure(checkpointed(model, 4), x, loss_fn=loss)
    # baseline: 8 ReLU outputs; checkpointed: the inputs of segments 2-4 plus the last
    # segment's 2 ReLU outputs (its first Linear saves a segment input already counted)
    row = 4 * 32 * 4
    assert base.saved_activations == 8 * row
    assert ckpt.saved_activations == (3 + 2) * row


def conv_net():
    def block():
        return [nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()]

    return nn.Sequential(*block(), *block(), *block(), *block(), nn.Flatten(), nn.Linear(256, 3))


def test_selective_checkpoint_keeps_convolution_results_and_recomputes_the_rest():
    from smallfoot.memory import estimate

    torch.manual_seed(0)
    model = conv_net()
    x = torch.randn(2, 4, 8, 8)
    loss = lambda out, y: out.sum()  # noqa: E731
    feature_map = 2 * 4 * 8 * 8 * 4
    base = measure(model, x, loss_fn=loss).saved_activations
    full = measure(checkpointed(model, 2, "full"), x, loss_fn=loss).saved_activations
    selective = checkpointed(model, 2, "selective")
    kept = measure(selective, x, loss_fn=loss).saved_activations
    assert estimate(selective, x, loss_fn=loss).saved_activations == kept
    # the first segment (conv, BN, ReLU, conv, BN, ReLU, conv; its input is the batch, its
    # output the next segment's input) keeps the results of its first 2 convolutions;
    # baseline keeps 2 BN inputs, 2 ReLU outputs and 2 BN statistics (mean and 1/std of 4
    # channels), the full checkpoint nothing; the plain rest is the same in all three
    assert base - kept == 2 * feature_map + 2 * 2 * 4 * 4
    assert kept - full == 2 * feature_map
    with pytest.raises(ConfigError, match="--policy must be full or selective"):
        checkpointed(model, 2, "some")


def test_selective_checkpoint_trains_from_the_cli_options(tmp_path):
    config = RunConfig(
        dataset="digits", model="cnn4", method="checkpoint",
        method_options={"segments": 4, "policy": "selective"}, epochs=1, batch_size=32,
        train_limit=128, test_limit=64, out_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    summary = run_training(config)
    assert summary["memory"]["saved_activations"] > 0 and summary["test_accuracy"] is not None


def test_offload_gradients_and_cpu_note(tmp_path):
    torch.manual_seed(0)
    plain = net()
    offloaded = net()
    offloaded.load_state_dict(plain.state_dict())
    Offloaded(offloaded)
    x = torch.randn(8, 6, dtype=torch.float64)
    for a, b in zip(grads_after_step(plain, x), grads_after_step(offloaded, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    base = measure(plain, x, loss_fn=lambda out, y: out.sum())
    moved = measure(offloaded, x, loss_fn=lambda out, y: out.sum())
    # on the CPU the copies cost what the originals did
    assert moved.saved_activations >= base.saved_activations


@pytest.mark.parametrize("method", ["checkpoint", "offload"])
def test_methods_train_and_record_memory(tmp_path, method):
    config = RunConfig(
        dataset="digits",
        model="mlp",
        method=method,
        epochs=1,
        batch_size=32,
        train_limit=128,
        test_limit=64,
        out_dir=str(tmp_path),
        progress=False,
    )
    summary = run_training(config)
    run_dir = next(tmp_path.iterdir())
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["memory"]["saved_activations"] > 0 and saved["memory"]["peak"] > 0
    if method == "offload":
        assert summary["memory"]["note"] == OFFLOAD_CPU_NOTE


def test_checkpoint_with_inplace_relu_at_a_boundary():
    def block():
        return [nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(inplace=True)]

    torch.manual_seed(0)
    plain = nn.Sequential(*block(), *block(), *block()).double()
    wrapped = checkpointed(nn.Sequential(*block(), *block(), *block()).double(), 4)
    wrapped.load_state_dict(plain.state_dict())
    assert all(not getattr(wrapped[a], "inplace", False) for a, _ in wrapped.segment_bounds())
    x = torch.randn(8, 4, dtype=torch.float64)
    for a, b in zip(grads_after_step(plain, x), grads_after_step(wrapped, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_selective_checkpoint_runs_in_place_layers_out_of_place():
    # an in-place ReLU right after a kept matrix product would overwrite the kept result
    # (PyTorch raises in the recomputation); VGG's layers are Conv/Linear -> ReLU(inplace)
    def layers():
        return [nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True),
                nn.Dropout(0.2), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)]  # fmt: skip

    torch.manual_seed(0)
    plain = nn.Sequential(*layers()).double()
    wrapped = checkpointed(nn.Sequential(*layers()).double(), 2, "selective")
    wrapped.load_state_dict(plain.state_dict())
    assert not any(getattr(m, "inplace", False) for m in wrapped.modules())
    x = torch.randn(8, 4, dtype=torch.float64)
    for a, b in zip(grads_after_step(plain, x), grads_after_step(wrapped, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_accumulating_trainer_gives_the_full_batch_gradient():
    from smallfoot.alternatives import AccumulatingTrainer
    from smallfoot.data import ArrayDataset
    from smallfoot.losses import SoftmaxCrossEntropy
    from smallfoot.train.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(3, (10,))
    data = ArrayDataset(x, y, 3, "synthetic")
    config = TrainConfig(epochs=1, batch_size=10)
    grads = []
    for trainer in (
        Trainer(model, data, None, config, loss_fn=SoftmaxCrossEntropy(), progress=False),
        AccumulatingTrainer(
            model,
            data,
            None,
            config,
            loss_fn=SoftmaxCrossEntropy(),
            progress=False,
            micro_batches=3,
        ),
    ):
        model.zero_grad(set_to_none=True)
        loss, output = trainer.forward_backward_step(x, y)
        grads.append((loss, output, [p.grad.clone() for p in model.parameters()]))
    (loss_a, out_a, grad_a), (loss_b, out_b, grad_b) = grads
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(out_b, out_a)
    for a, b in zip(grad_a, grad_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_accumulate_estimate_holds_gradients_and_cuts_the_peak():
    from smallfoot.alternatives import accumulated
    from smallfoot.runner.step import method_step_memory

    def peak(method, **options):
        return method_step_memory(
            "cnn4", (1, 16, 16), 32, method=method, method_options=options, fake=True
        )

    base, half, one = (
        peak("baseline"),
        peak("accumulate", micro_batches=2),
        peak("accumulate", micro_batches=1),
    )
    small = method_step_memory("cnn4", (1, 16, 16), 16, fake=True)
    assert one.peak == base.peak
    assert half.peak < base.peak
    # the micro-step holds every gradient on top of a batch-16 step, and one micro-batch's
    # inputs (the trainer loads them one at a time)
    assert half.peak >= small.peak
    assert half.inputs == small.inputs == base.inputs // 2
    assert half.stage == "micro-batch of 16"
    # a stream's batch is read whole (on the CPU): the other micro-batch's inputs are held too
    streamed = method_step_memory(
        "cnn4", (1, 16, 16), 32, method="accumulate", method_options={"micro_batches": 2},
        fake=True, streamed=True,
    )  # fmt: skip
    assert streamed.inputs == base.inputs
    assert streamed.peak == half.peak + small.inputs
    assert accumulated(small, 32, whole_batch_loaded=True).peak == streamed.peak


def test_accumulating_trainer_loads_micro_batches_and_trains_as_the_full_batch():
    from smallfoot.alternatives import AccumulatingTrainer
    from smallfoot.data import ArrayDataset
    from smallfoot.train.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(3, (40,))
    data = ArrayDataset(x, y, 3, "synthetic")
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1)
    weights, seen = [], []
    for make in (Trainer, AccumulatingTrainer):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
        options = {"micro_batches": 3} if make is AccumulatingTrainer else {}
        trainer = make(model, data, None, config, progress=False, **options)
        model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
        metrics = trainer.fit()
        weights.append([p.detach().clone() for p in model.parameters()])
    # epochs of batches 16, 16, 8: the accumulating trainer ran parts of 6, 5, 5 / 3, 3, 2
    assert seen[:3] == [16, 16, 8] and seen[6:15] == [6, 5, 5, 6, 5, 5, 3, 3, 2]
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert 0 <= metrics["train_accuracy"] <= 1


def test_accumulating_trainer_refuses_a_closure_optimizer():
    from smallfoot.alternatives import AccumulatingTrainer
    from smallfoot.data import ArrayDataset
    from smallfoot.train.trainer import TrainConfig

    class ClosureSGD(torch.optim.SGD):
        needs_closure = True

    model = nn.Linear(6, 3)
    data = ArrayDataset(torch.randn(8, 6), torch.randint(3, (8,)), 3, "synthetic")
    with pytest.raises(ConfigError, match="ClosureSGD re-evaluates each batch"):
        AccumulatingTrainer(
            model, data, None, TrainConfig(), optimizer=ClosureSGD(model.parameters(), lr=0.1),
            progress=False,
        )  # fmt: skip


def test_accumulate_refuses_more_micro_batches_than_samples():
    from smallfoot.runner.step import method_step_memory

    with pytest.raises(ConfigError, match="--micro-batches 9 exceeds --batch-size 8"):
        method_step_memory(
            "cnn4",
            (1, 16, 16),
            8,
            method="accumulate",
            method_options={"micro_batches": 9},
            fake=True,
        )


def test_accumulate_trains_and_records_its_micro_batch_memory(tmp_path):
    def run(method, **options):
        config = RunConfig(
            dataset="digits", model="mlp", method=method, method_options=options, epochs=1,
            batch_size=32, train_limit=128, test_limit=64, out_dir=str(tmp_path / method),
            progress=False,
        )  # fmt: skip
        return run_training(config)

    base, accumulated = run("baseline"), run("accumulate", micro_batches=4)
    assert accumulated["memory"]["stage"] == "micro-batch of 8"
    assert accumulated["memory"]["inputs"] == base["memory"]["inputs"] // 4
    assert 0 < accumulated["memory"]["saved_activations"] < base["memory"]["saved_activations"]
    assert accumulated["test_accuracy"] is not None


def _context(method, options, batch=12):
    from smallfoot.data import ArrayDataset
    from smallfoot.methods import RunContext

    torch.manual_seed(0)
    data = ArrayDataset(torch.randn(batch, 6), torch.randint(3, (batch,)), 3, "synthetic")
    config = RunConfig(model="mlp", method=method, batch_size=batch, method_options=options)
    runner = get_method(method, options)
    return runner, RunContext(config, runner.options, data, data), data


def test_accumulate_composes_with_checkpoint_and_keeps_the_gradient():
    runner, ctx, data = _context("accumulate+checkpoint", {"micro_batches": 3, "segments": 2})
    reference, ref_ctx, _ = _context("baseline", {})
    torch.manual_seed(1)
    model = runner.build_model(ctx).double()
    assert isinstance(model, CheckpointSequential)
    plain = nn.Sequential(*model).double()  # the same layers, no checkpointing
    x, y = data.x.double(), data.y
    grads = []
    for trainer in (reference.make_trainer(ref_ctx, plain), runner.make_trainer(ctx, model)):
        trainer.model.zero_grad(set_to_none=True)
        trainer.forward_backward_step(x, y)
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_composition_saves_at_least_what_each_part_saves():
    from smallfoot.runner.step import method_step_memory

    def saved(method, **options):
        return method_step_memory(
            "cnn4", (1, 16, 16), 32, method=method, method_options=options, fake=True
        ).saved_activations

    both = saved("accumulate+checkpoint", micro_batches=4, segments=3)
    assert both <= min(saved("accumulate", micro_batches=4), saved("checkpoint", segments=3))


@pytest.mark.parametrize(
    "name, message",
    [
        ("accumulate+layerwise", "layerwise trains with its own loop or trainer"),
        ("checkpoint+offload", "these methods do not compose"),
        ("accumulate+checkpoint+facto", "compose two methods"),
    ],
)
def test_compositions_that_cannot_work_are_refused_with_the_reason(name, message):
    from smallfoot.methods import get_method_class

    with pytest.raises(ConfigError, match=message):
        get_method_class(name)


def test_accumulate_interrupted_and_resumed_ends_with_the_straight_runs_weights(
    tmp_path, monkeypatch, interrupt_at
):
    from smallfoot.errors import TrainingInterrupted
    from smallfoot.train.trainer import Trainer

    def config(name):
        return RunConfig(
            dataset="digits", model="cnn4", method="accumulate", method_options={"micro_batches": 3},
            epochs=3, batch_size=32, train_limit=160, test_limit=64, augment=True,
            out_dir=str(tmp_path), run_name=name, progress=False, measure_memory=False,
        )  # fmt: skip

    def weights(name):
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]

    run_training(config("straight"))
    original = interrupt_at(2)  # Ctrl-C at the start of epoch 3
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_training(config("resumed"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    straight, resumed = weights("straight"), weights("resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
