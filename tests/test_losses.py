"""The output losses: gradients y - t (float64 autograd vs closed form), stability, targets, prediction."""

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, ShapeError, UnknownNameError
from smallfoot.losses import (
    LinearMSE,
    NegativeCorrelationLoss,
    SigmoidCrossEntropy,
    SoftmaxCrossEntropy,
    SparseCrossEntropy,
    build_loss,
    class_scores,
    encode_targets,
    list_losses,
    normalize_scores,
)
from smallfoot.runner import run_training

K = 5


def logits_and_targets(seed=0, batch=7, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(batch, K, generator=generator, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, K, (batch,), generator=generator)
    return x, y


def closed_form_gradient(loss, x, y):
    """``scale (y - t) / B``: the canonical error delta of the batch-mean loss."""
    t = encode_targets(y, K, loss.target_values, torch.float64)
    if isinstance(loss, SparseCrossEntropy):
        out = loss.alpha * torch.exp(x)
    elif isinstance(loss, NegativeCorrelationLoss):
        out = loss.alpha * x**3 + loss.beta
    else:
        out = x
    return loss.scale * (out - t).detach() / len(y)


@pytest.mark.parametrize(
    "loss",
    [
        SparseCrossEntropy(K),
        SparseCrossEntropy(K, alpha=0.5, target_values=(0, 2), scale=1.0),
        NegativeCorrelationLoss(K),
        NegativeCorrelationLoss(K, alpha=0.0007, beta=0.0, target_values=(-1, 1), scale=1.0),
        LinearMSE(K),
        LinearMSE(K, target_values=(0, 1), scale=1.0),
    ],
    ids=["exp", "exp-t02-raw", "pow3", "pow3-t-11-raw", "mse", "mse-t01-raw"],
)
def test_gradient_is_y_minus_t(loss):
    x, y = logits_and_targets()
    (grad,) = torch.autograd.grad(loss(x, y), x)
    torch.testing.assert_close(grad, closed_form_gradient(loss, x, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss_cls", [SparseCrossEntropy, NegativeCorrelationLoss, LinearMSE])
def test_default_scale_is_the_class_mean_in_units_of_the_target_gap(loss_cls):
    """Default loss = thesis loss / (K (t_true - t_other)); scale=1 is the thesis' loss."""
    x, y = logits_and_targets(seed=2)
    default, raw = loss_cls(K), loss_cls(K, scale=1.0)
    low, high = default.target_values
    assert default.scale == 1.0 / (K * (high - low)) and raw.scale == 1.0
    torch.testing.assert_close(default(x, y), raw(x, y) * default.scale)
    with pytest.raises(ConfigError, match="scale"):
        loss_cls(K, scale=0.0)


def test_sigmoid_ce_gradient_is_the_bounded_y_minus_t():
    """Table 4.1's sigmoid outputs with their canonical loss: dL/dx = scale (y - t) / B with
    y = sigmoid(x) in [0, 1]; finite for logits of magnitude 100."""
    loss = SigmoidCrossEntropy(K)
    assert loss.scale == 1.0 / K and loss.target_values == (0.0, 1.0)
    x, y = logits_and_targets(seed=3)
    (grad,) = torch.autograd.grad(loss(x, y), x)
    t = encode_targets(y, K, (0, 1), torch.float64)
    expected = loss.scale * (torch.sigmoid(x).detach() - t) / len(y)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    far = torch.full((2, K), 100.0, requires_grad=True)
    value = loss(far, torch.tensor([0, 1]))
    (grad,) = torch.autograd.grad(value, far)
    assert torch.isfinite(value) and grad.abs().max() <= loss.scale / 2 + 1e-6
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        SigmoidCrossEntropy(K, target_values=(0, 2))


def test_softmax_gradient_is_softmax_minus_onehot():
    x, y = logits_and_targets()
    (grad,) = torch.autograd.grad(SoftmaxCrossEntropy()(x, y), x)
    expected = (x.softmax(1) - encode_targets(y, K, (0, 1), torch.float64)).detach() / len(y)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_cross_entropy_finite_for_logits_of_magnitude_100(dtype):
    loss = SparseCrossEntropy(K)
    x = torch.tensor([[100.0, -100.0, 0.0, -120.0, 50.0], [-100.0] * K], dtype=dtype)
    x.requires_grad_()
    value = loss(x, torch.tensor([0, 1]))
    assert torch.isfinite(value)
    (grad,) = torch.autograd.grad(value, x)
    if dtype == torch.float64:
        assert torch.isfinite(grad).all()
    # very negative logits: y -> 0, the gradient is -t / B for the true class, 0 elsewhere
    expected = torch.tensor([0, -8.0 * loss.scale, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(grad[1].double(), expected)


def test_sparse_cross_entropy_matches_its_definition():
    x, y = logits_and_targets()
    loss = SparseCrossEntropy(K, alpha=0.3, target_values=(0, 4), scale=0.5)
    out = 0.3 * torch.exp(x)
    t = encode_targets(y, K, (0, 4), torch.float64)
    expected = 0.5 * (out.abs() - t * torch.log(out)).sum(1).mean()
    torch.testing.assert_close(loss(x, y), expected)


def test_target_value_encoding():
    encoded = encode_targets(torch.tensor([2, 0]), 3, (-1, 16))
    assert encoded.dtype == torch.float32
    assert encoded.tolist() == [[-1, -1, 16], [16, -1, -1]]
    assert encode_targets(torch.tensor([1]), 3).tolist() == [[0, 1, 0]]
    with pytest.raises(ShapeError):
        encode_targets(torch.zeros(2, 3, dtype=torch.long), 3)


@pytest.mark.parametrize("name", ["softmax-ce", "exp-ga", "pow3-ga", "linear-mse"])
def test_prediction_helper_argmax_equals_raw_argmax(name):
    loss, predict = build_loss(name, K)
    x, _ = logits_and_targets(seed=3, batch=50, scale=3.0)
    x = x.detach()
    raw = x.argmax(1)
    assert torch.equal(predict(x), raw)
    assert torch.equal(class_scores(loss, x).argmax(1), raw)
    probabilities = class_scores(loss, x, normalize=True)
    assert torch.equal(probabilities.argmax(1), raw)
    assert (probabilities >= 0).all() and (probabilities <= 1).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(50, dtype=torch.float64))


def test_exp_ga_normalised_scores_are_softmax():
    x, _ = logits_and_targets(seed=4)
    torch.testing.assert_close(
        class_scores(SparseCrossEntropy(K), x.detach(), normalize=True), x.detach().softmax(1)
    )


def test_normalize_scores_uniform_for_equal_rows():
    torch.testing.assert_close(normalize_scores(torch.zeros(2, 4)), torch.full((2, 4), 0.25))


def test_build_loss_defaults_and_options():
    assert [info.name for info in list_losses()] == [
        "exp-ga",
        "linear-mse",
        "pow3-ga",
        "sigmoid-ce",
        "softmax-ce",
    ]
    loss, _ = build_loss("exp-ga", 10)
    assert (loss.alpha, loss.target_values, loss.scale) == (0.1, (0.0, 16.0), 1 / 160)
    loss, _ = build_loss("pow3-ga", 10, target_values=[-2, 10], alpha=0.002, beta=0.1, scale=1)
    assert (loss.alpha, loss.beta, loss.target_values) == (0.002, 0.1, (-2.0, 10.0))
    assert loss.scale == 1.0
    assert build_loss("linear-mse", 10)[0].target_values == (-1.0, 1.0)


@pytest.mark.parametrize(
    "name, options",
    [
        ("softmax-ce", {"alpha": 0.1}),
        ("softmax-ce", {"scale": 0.5}),
        ("linear-mse", {"scale": -1.0}),
        ("linear-mse", {"beta": 0.1}),
        ("exp-ga", {"alpha": 0.0}),
        ("exp-ga", {"target_values": [-1, 1]}),
        ("exp-ga", {"target_values": [16, 0]}),
        ("pow3-ga", {"target_values": 16}),
        ("pow3-ga", {"beta": -1.0}),
    ],
)
def test_bad_options_raise_config_errors(name, options):
    with pytest.raises(ConfigError):
        build_loss(name, 10, **options)


def test_unknown_loss_and_wrong_shape():
    with pytest.raises(UnknownNameError):
        build_loss("hinge", 10)
    loss, _ = build_loss("exp-ga", 10)
    with pytest.raises(ShapeError, match=r"\(B, 10\)"):
        loss(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["exp-ga", "pow3-ga", "linear-mse"])
def test_each_loss_trains_from_its_defaults_at_the_default_learning_rate(name, tmp_path):
    """`smallfoot train --dataset digits --model cnn4 --loss NAME --epochs 2`: no divergence at
    the CLI's learning rate, and well above chance (10%)."""
    config = RunConfig(
        dataset="digits", model="cnn4", loss=name, epochs=2, out_dir=str(tmp_path),
        progress=False, measure_memory=False,
    )  # fmt: skip
    assert config.lr == RunConfig().lr and not config.loss_options
    summary = run_training(config)
    assert summary["test_accuracy"] >= 0.8
