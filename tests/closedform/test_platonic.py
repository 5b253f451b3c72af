"""fit_mlp: exact solves, repeatability, mini-batch normal equations, tries, errors."""

import pytest
import torch

from smallfoot.closedform import (
    encode_targets,
    fit_mlp,
    layer_projections,
    predicted_classes,
    sorted_pca_indices,
)
from smallfoot.closedform.platonic import _readout_pass, _Stack
from smallfoot.errors import ConfigError, TrainingError
from smallfoot.models import build_model


def blobs(m=200, n=5, seed=0):
    """Two linearly separable blobs (margin 4 along feature 0), labels 0/1."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(m) % 2
    x = torch.randn(m, n, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.where(y == 1, 1.0, -1.0) * (2.0 + 0.3 * x[:, 0].abs())
    return x, y


def lsd_of(z, y_onehot):
    """Reference eq. 5.3 on ``[1 | z]`` with torch.linalg.lstsq in float64."""
    z1 = torch.cat([torch.ones(len(z), 1, dtype=torch.float64), z.double()], 1)
    q = torch.linalg.lstsq(z1, y_onehot.double(), driver="gelsd").solution
    return float((y_onehot - z1 @ q).pow(2).sum() / len(z))


@pytest.mark.parametrize("targets", ["deterministic", "random", "platonic-pca", "elm"])
def test_linearly_separable_fit_is_perfect(targets):
    x, y = blobs()
    result = fit_mlp(x, y, [5], targets=targets, beta=10.0, ridge=1e-6)
    assert result.train_error == 0.0
    with torch.no_grad():
        assert torch.equal(predicted_classes(result.model(x)), y)


def test_deterministic_fit_is_bit_for_bit_repeatable():
    x, y = blobs(m=300, n=8)
    first = fit_mlp(x, y, [8, 6], targets="deterministic", ema=0.2, dtype=torch.float32)
    second = fit_mlp(x, y, [8, 6], targets="deterministic", ema=0.2, dtype=torch.float32)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


@pytest.mark.parametrize("targets", ["deterministic", "random"])
def test_minibatch_normal_equations_equal_full_batch(targets):
    x, y = blobs(m=203, n=6)
    options = dict(targets=targets, ridge=1e-3, ema=0.5, tries=3, seed=4)
    full = fit_mlp(x, y, [10, 5], batch_size=None, **options)
    batched = fit_mlp(x, y, [10, 5], batch_size=17, **options)
    for name, tensor in full.model.state_dict().items():
        torch.testing.assert_close(batched.model.state_dict()[name], tensor, rtol=1e-9, atol=1e-9)
    for a, b in zip(full.layers, batched.layers, strict=True):
        assert a.lsd == pytest.approx(b.lsd, rel=1e-9, abs=1e-12)
        assert a.train_error == b.train_error


def test_tries_keep_the_lowest_lsd():
    x, y = blobs(m=150, n=3)
    y_sign = (2.0 * y - 1.0)[:, None].double()  # the default coding of two classes
    result = fit_mlp(x, y, [3], targets="random", tries=6, beta=0.5, seed=1)
    hidden = result.layers[0]
    assert len(hidden.tries_lsd) == 6
    assert len(set(hidden.tries_lsd)) > 1  # the candidates really differ
    assert hidden.lsd == pytest.approx(min(hidden.tries_lsd), rel=1e-7)
    with torch.no_grad():
        z = result.model[:3](x)
    assert lsd_of(z, y_sign) == pytest.approx(hidden.lsd, rel=1e-7)


def test_more_tries_never_raise_the_first_layer_lsd():
    x, y = blobs(m=150, n=3)
    one = fit_mlp(x, y, [2], targets="random", tries=1, beta=0.5, seed=2)
    five = fit_mlp(x, y, [2], targets="random", tries=5, beta=0.5, seed=2)
    assert five.layers[0].tries_lsd[0] == one.layers[0].tries_lsd[0]  # same first draw
    assert min(five.layers[0].tries_lsd) <= one.layers[0].tries_lsd[0]
    assert five.layers[0].lsd <= one.layers[0].lsd * (1 + 1e-9)


def test_solvers_agree_on_a_well_conditioned_problem():
    x, y = blobs(m=120, n=4)
    results = {
        solver: fit_mlp(
            x, y, [6], activation="tanh", targets="random", solver=solver, ridge=0.0, seed=3
        )
        for solver in ("ridge", "pinv", "lstsq")
    }
    reference = results["ridge"].model.state_dict()
    for solver in ("pinv", "lstsq"):
        for name, tensor in results[solver].model.state_dict().items():
            torch.testing.assert_close(tensor, reference[name], rtol=1e-6, atol=1e-6)


def test_singular_float32_system_raises_a_clear_error():
    x, y = blobs(m=100, n=3)
    x = torch.cat([x, torch.zeros(len(x), 1, dtype=x.dtype)], dim=1).float()  # Z^T Z singular
    with pytest.raises(TrainingError, match="singular.*ridge.*float64"):
        fit_mlp(x, y, [4], targets="random", ridge=0.0, dtype=torch.float32)
    # the same data solves with a ridge penalty, with no NaNs
    result = fit_mlp(x, y, [4], targets="random", ridge=1e-2, dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_model_loads_into_the_mlp_baseline():
    x, y = blobs(m=120, n=6)
    y[::3] = 2  # three classes: one output per class
    result = fit_mlp(x, y, [7, 5], targets="deterministic", dtype=torch.float32)
    mlp = build_model("mlp", (6,), 3, widths=(7, 5))
    mlp.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(mlp(x.float()), result.model(x.float()))


def test_sine_regression_fits_closely():
    x = torch.linspace(-1, 1, 500, dtype=torch.float64)[:, None]
    y = torch.sin(2 * torch.pi * x)
    result = fit_mlp(x, y, [16, 16], activation="celu", targets="random", alpha=0.1, beta=10.0,
                     solver="pinv", tries=5, num_classes=0)  # fmt: skip
    assert result.layers[-1].projection == "output"
    assert result.train_error < 1e-3  # mean squared error
    with torch.no_grad():
        assert float((result.model(x) - y).pow(2).mean()) == pytest.approx(result.train_error)


def test_ema_weights_follow_the_update_rule():
    x, y = blobs(m=40, n=3)
    y1 = torch.nn.functional.one_hot(y, 2).double()
    stack = _Stack(x, y1, torch.nn.ReLU(), batch_size=9, dtype=torch.float64)
    readout = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = torch.rand(40, 1, dtype=torch.float64)
    error, residual, new_d = _readout_pass(stack, y1, readout, 2, d, ema=0.2)
    predicted = torch.cat([torch.ones(40, 1, dtype=torch.float64), x], 1) @ readout
    squared = (y1 - predicted).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(new_d, 0.2 * d + 0.8 * squared)
    assert error == pytest.approx(float((predicted.argmax(1) != y).double().mean()))
    assert residual == pytest.approx(float(squared.sum() / 40))
    _, _, unchanged = _readout_pass(stack, y1, readout, 2, d, ema=None)
    assert torch.equal(unchanged, d)


def test_sorted_pca_picks_evenly_spaced_samples_along_the_first_component():
    x = torch.zeros(10, 2, dtype=torch.float64)
    x[:, 0] = torch.tensor([5.0, 0, 9, 1, 8, 2, 7, 3, 6, 4])
    x[:, 1] = 0.01 * torch.arange(10)
    chosen = x[sorted_pca_indices(x, 5), 0]
    assert chosen.tolist() in ([0.0, 2.0, 4.0, 6.0, 8.0], [9.0, 7.0, 5.0, 3.0, 1.0])


def test_bad_options_raise_config_errors():
    x, y = blobs(m=50, n=3)
    with pytest.raises(ConfigError, match="at most 4 components"):  # 3 inputs + 1 sign column
        fit_mlp(x, y, [6], targets="platonic-pca")
    with pytest.raises(ConfigError, match="first hidden layer"):
        layer_projections(["random", "sorted-pca"], 2)
    with pytest.raises(ConfigError, match="mini-batches"):
        fit_mlp(x, y, [4], solver="pinv", batch_size=10)
    with pytest.raises(ConfigError, match="unknown projection"):
        fit_mlp(x, y, [4], targets="gradient")
    with pytest.raises(ConfigError, match="unknown coding"):
        fit_mlp(x, y, [4], coding="binary")
    with pytest.raises(ConfigError, match="one name per hidden layer"):
        fit_mlp(x, y, [4, 4], targets=["random"])


def test_two_classes_are_one_sign_column_by_default():
    x, y = blobs(m=100, n=3)
    coded = encode_targets(y, 2, torch.float64)
    assert coded.shape == (100, 1) and set(coded[:, 0].tolist()) == {-1.0, 1.0}
    assert torch.equal(coded[:, 0] > 0, y == 1)
    result = fit_mlp(x, y, [4], targets="random")
    assert result.coding == "sign" and result.model[-1].out_features == 1
    assert result.layers[-1].width == 1


def test_codings_of_several_classes():
    y = torch.tensor([0, 1, 2, 2])
    one_hot = torch.nn.functional.one_hot(y, 3).double()
    torch.testing.assert_close(encode_targets(y, 3, torch.float64), one_hot)
    torch.testing.assert_close(encode_targets(y, 3, torch.float64, "sign"), 2 * one_hot - 1)
    centred = encode_targets(y, 3, torch.float64, "centred")
    torch.testing.assert_close(centred.mean(0), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(centred - one_hot, -one_hot.mean(0).expand(4, 3))


@pytest.mark.parametrize("coding", ["one-hot", "sign", "centred"])
def test_outputs_estimate_one_hot_targets_whatever_the_coding(coding):
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    corners = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    x = corners[y] + 0.3 * torch.randn(90, 2, generator=gen, dtype=torch.float64)
    result = fit_mlp(x, y, [6], targets="random", coding=coding, ridge=1e-6)
    reference = fit_mlp(x, y, [6], targets="random", coding="one-hot", ridge=1e-6)
    with torch.no_grad():
        out = result.model(x)
    assert torch.equal(predicted_classes(out), y)
    # the output layer is affine-equivariant: only the hidden targets differ between codings,
    # so the fit of the one-hot matrix from the same hidden layer is reproduced exactly
    if coding == "one-hot":
        torch.testing.assert_close(out, reference.model(x).detach())
    assert float((out - torch.nn.functional.one_hot(y, 3)).pow(2).mean()) < 0.1


def test_sign_coding_fixes_the_dead_first_layer_of_uncentred_binary_targets():
    # issue 18: with {0, 1} columns and a large beta the constant half of beta * Y lands in the
    # first layer's biases, so the ReLU units are dead or always on and the layer is linear
    board = torch.rand(600, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    board = board * 2 - 1
    y = (((board + 1) * 2).floor().long().sum(1)) % 2  # a 4x4 checkerboard
    options = dict(targets="random", activation="relu", alpha=0.08, beta=200.0, solver="pinv")
    sign = fit_mlp(board, y, [256, 256], coding="sign", **options)
    one_hot = fit_mlp(board, y, [256, 256], coding="one-hot", **options)
    with torch.no_grad():
        first = sign.model[2](sign.model[1](board))
    switching = ((first > 0).any(0) & (first <= 0).any(0)).double().mean()
    assert switching > 0.5  # most units switch somewhere on the square
    assert sign.train_error < one_hot.train_error


def test_float32_pinv_defaults_to_the_thesis_tolerance():
    x, y = blobs(m=200, n=4)
    # a nearly collinear column: its singular value (~1e-4) lies between 1e-5 and PyTorch's
    # relative cut-off (eps * max(m, n) * largest, ~1e-3 here)
    noise = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:, 3] = x[:, 2] + 1e-5 * noise
    x = x.float()
    default = fit_mlp(x, y, [16], targets="random", solver="pinv", dtype=torch.float32)
    explicit = fit_mlp(x, y, [16], targets="random", solver="pinv", dtype=torch.float32,
                       tol=1e-5)  # fmt: skip
    pytorch = fit_mlp(x, y, [16], targets="random", solver="pinv", dtype=torch.float32, tol=0)
    for name, tensor in default.model.state_dict().items():
        assert torch.equal(tensor, explicit.model.state_dict()[name])
    assert any(
        not torch.equal(tensor, pytorch.model.state_dict()[name])
        for name, tensor in default.model.state_dict().items()
    )


def test_regression_with_several_targets():
    x = torch.linspace(-1, 1, 200, dtype=torch.float64)[:, None]
    y = torch.cat([torch.sin(torch.pi * x), torch.cos(torch.pi * x)], dim=1)
    result = fit_mlp(x, y, [16], activation="tanh", num_classes=0, solver="pinv")
    assert result.coding == "none" and result.model[-1].out_features == 2
    assert result.train_error < 1e-2


@pytest.mark.parametrize("targets", ["random", "platonic-pca"])
def test_inputs_read_on_demand_fit_as_in_memory_a_batch_at_a_time(targets, counting_inputs):
    x, y = blobs(m=200, n=5)
    images = x.float().reshape(200, 1, 5, 1)
    lazy = counting_inputs(images)
    options = dict(targets=targets, batch_size=64, ema=0.5, seed=3)
    in_memory = fit_mlp(images, y, (6, 4), **options)
    read = fit_mlp(lazy, y, (6, 4), **options)
    expected, got = in_memory.model.state_dict(), read.model.state_dict()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert max(lazy.reads) == 64 and sum(lazy.reads) >= 4 * 200


def test_inputs_read_on_demand_refuse_what_reads_them_whole(counting_inputs):
    x, y = blobs()
    lazy = counting_inputs(x.float())
    with pytest.raises(ConfigError, match="use solver='ridge' with a batch_size"):
        fit_mlp(lazy, y, (4,), solver="pinv")
    with pytest.raises(ConfigError, match="use solver='ridge' with a batch_size"):
        fit_mlp(lazy, y, (4,), batch_size=None)
    with pytest.raises(ConfigError, match="sorted-pca .* needs every input in memory"):
        fit_mlp(lazy, y, (4,), targets="sorted-pca", batch_size=50)
    assert lazy.reads == []
