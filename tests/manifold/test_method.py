"""``--method manifold``: options, the trainer step (CE everywhere, L_u only in the head), tiny
batches, the run directory."""

import json

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.data import load_dataset
from smallfoot.errors import ConfigError
from smallfoot.manifold.method import ManifoldTrainer, RegularisedNet, make_regulariser
from smallfoot.methods import RunContext, get_method
from smallfoot.models.bottleneck import attach_head
from smallfoot.runner import run_training
from smallfoot.train import TrainConfig, Trainer

DATA = {"shape": [1, 8, 8], "num_classes": 3, "size": 30}


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return attach_head("cnn4", (1, 8, 8), 3, bottleneck_width=4, head_width=16, widths=[4, 4, 4, 4])


def test_options_from_cli_strings_including_lambda():
    method = get_method(
        "manifold",
        {"bottleneck-width": "8", "lambda": "0.01", "alphas": "0.1,1", "regularize": "false"},
    )
    assert method.options.bottleneck_width == 8
    assert method.options.lambda_ == 0.01
    assert method.options.alphas == (0.1, 1.0)
    assert method.options.regularize is False
    with pytest.raises(ConfigError, match="bottleneck_width <= head_width"):
        get_method("manifold", {"bottleneck_width": 64, "head_width": 32})
    with pytest.raises(ConfigError, match=">= 0"):
        get_method("manifold", {"lambda": -1})


def test_relative_option_makes_the_regulariser_scale_free():
    net = tiny_net()
    torch.manual_seed(1)
    _, acts = net.head.forward_activations(net.features(torch.randn(6, 1, 8, 8)))
    big = [10 * a for a in acts]  # the same net with activations 10x larger (no new forward)

    def ratio(options):
        reg = get_method("manifold", options).regulariser(net)
        reg.lam = 0.0
        return float(reg(big).detach()) / float(reg(acts).detach())

    # The regulariser recomputes the layers from acts[k-1]; a bias-free homogeneous head makes
    # 10x inputs give 10x activations, so compare the loss at z and at 10 z.
    with torch.no_grad():
        for layer in net.head.layers:
            layer[0].bias.zero_()
    assert ratio({"relative": "true"}) == pytest.approx(1.0, rel=1e-4)
    assert ratio({}) == pytest.approx(100.0, rel=1e-4)


def test_regulariser_alpha_schedule_and_explicit_alphas():
    net = tiny_net()  # widths 16, 8, 4: two terms
    assert make_regulariser(net.head, None, 1.0, 0.1, 0.0).alphas == [0.1, 1.0]
    assert make_regulariser(net.head, (0.5, 2.0), 1.0, 0.1, 0.0).alphas == [0.5, 2.0]
    with pytest.raises(ConfigError, match="one alpha per consecutive pair"):
        make_regulariser(net.head, (0.5,), 1.0, 0.1, 0.0)


def test_step_gradients_features_get_cross_entropy_only_head_gets_both():
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    grads = {}
    for regularised in (False, True):
        net = tiny_net().double()
        reg = make_regulariser(net.head, None, 1.0, 0.5, 0.01) if regularised else None
        logits, unsupervised = RegularisedNet(net, reg)(x.double())
        (torch.nn.functional.cross_entropy(logits, y) + unsupervised).backward()
        grads[regularised] = {n: p.grad.clone() for n, p in net.named_parameters()}
    for name, grad in grads[True].items():
        if name.startswith("features.") or name.startswith("head.classifier."):
            torch.testing.assert_close(grad, grads[False][name])  # L_u never reaches them
        elif name.startswith("head.layers."):
            assert not torch.equal(grad, grads[False][name])


def make_trainer(batch_size, regularised=True, epochs=1, samples=30):
    train = load_dataset("synthetic", "train", **DATA).subset(list(range(samples)))
    test = load_dataset("synthetic", "test", **DATA).subset(list(range(samples)))
    net = tiny_net()
    reg = make_regulariser(net.head, None, 0.01, 0.1, 1e-4) if regularised else None
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01)
    return ManifoldTrainer(net, train, test, config, progress=False, regulariser=reg)


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_trains_at_tiny_batches(batch_size):
    # 2 full batches and a last batch of one sample, whose distance term is zero (no pair)
    trainer = make_trainer(batch_size, samples=2 * batch_size + 1)
    metrics = trainer.fit()
    assert metrics["train_manifold_loss"] > 0
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_without_regulariser_matches_the_plain_trainer():
    plain_net = tiny_net()
    train = load_dataset("synthetic", "train", **DATA).subset(list(range(12)))
    config = TrainConfig(epochs=1, batch_size=4, lr=0.01)
    plain = Trainer(plain_net, train, None, config, progress=False)
    plain.fit()
    ours = make_trainer(4, regularised=False, samples=12)
    ours.test_set = None
    metrics = ours.fit()
    assert "train_manifold_loss" not in metrics
    for a, b in zip(plain_net.parameters(), ours.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_manifold_trainer_needs_a_bottleneck_net():
    train = load_dataset("synthetic", "train", **DATA)
    with pytest.raises(ConfigError, match="BottleneckHead"):
        ManifoldTrainer(torch.nn.Linear(64, 3), train, None, TrainConfig(), progress=False)


def test_run_training_writes_manifold_metrics(tmp_path):
    config = RunConfig(
        dataset="synthetic",
        model="cnn4",
        method="manifold",
        epochs=1,
        batch_size=5,
        lr=0.01,
        out_dir=str(tmp_path),
        run_name="m",
        progress=False,
        measure_memory=True,
        model_options={"widths": [4, 4, 4, 4]},
        method_options={"bottleneck_width": 4, "head_width": 16, "lambda": 1e-4},
        data_options=DATA,
    )
    summary = run_training(config)
    lines = (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    assert "train_manifold_loss" in json.loads(lines[-1])
    assert summary["method"] == "manifold"
    memory = json.loads((tmp_path / "m" / "summary.json").read_text())["memory"]
    assert memory["peak"] > memory["parameters"] > 0


def run_config(**overrides):
    options = dict(dataset="synthetic", model="cnn4", method="manifold", data_options=DATA)
    return RunConfig(**{**options, **overrides})


def context(config):
    train = load_dataset("synthetic", "train", **DATA)
    method = get_method("manifold", config.method_options)
    return method, RunContext(config, method.options, train, train)


@pytest.mark.parametrize(
    "batch, reference, want",
    [(5, 128, 0.05 * 5 / 128), (128, 128, 0.05), (512, 128, 0.05), (5, 0, 0.05), (9, 18, 0.025)],
)
def test_learning_rate_scales_linearly_below_the_reference_batch(batch, reference, want):
    config = run_config(batch_size=batch, lr=0.05, method_options={"reference_batch": reference})
    method, ctx = context(config)
    assert method.learning_rate(ctx) == pytest.approx(want)
    optimizer = method.make_optimizer(ctx, tiny_net())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(want)


def test_model_name_and_check_run():
    method, ctx = context(run_config(model_options={"widths": [4, 4, 4, 4]}))
    assert method.model_name(ctx) == "cnn4_bottleneck"
    method.check_run(ctx)  # a valid run passes
    method, ctx = context(run_config(model="resnet20"))
    with pytest.raises(ConfigError, match="nn.Flatten.*--model cnn4"):
        method.check_run(ctx)
    one_layer = {"head_width": 16, "bottleneck_width": 16}
    method, ctx = context(run_config(method_options=one_layer))
    with pytest.raises(ConfigError, match="--head-width 32 or more, or --regularize false"):
        method.check_run(ctx)
    method, ctx = context(run_config(method_options={**one_layer, "regularize": False}))
    method.check_run(ctx)


def test_adapt_swaps_a_model_without_flatten_separated_features_for_cnn4():
    method = get_method("manifold")
    config = run_config(model="cnn4")
    assert method.adapt(config, (1, 8, 8)) == (config, [])
    adapted, notes = method.adapt(
        run_config(model="resnet20", model_options={"widths": [4, 4, 4]}), (1, 8, 8)
    )
    assert adapted.model == "cnn4" and adapted.model_options == {}
    assert len(notes) == 1 and "resnet20" in notes[0]


@pytest.mark.parametrize("fake", [False, True])
def test_step_memory_counts_the_regulariser(fake):
    small = {"widths": [4, 4, 4, 4]}
    peaks = {}
    for regularize in (True, False):
        config = run_config(
            batch_size=16,
            model_options=small,
            method_options={"bottleneck_width": 4, "head_width": 64, "regularize": regularize},
        )
        method, ctx = context(config)
        report = method.step_memory(ctx, fake=fake)
        peaks[regularize] = report.peak
    # the recomputed head layers and the (N, N) distance matrices are alive in the backward
    assert peaks[True] > peaks[False]
