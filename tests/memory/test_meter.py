"""The meter: exact byte counts on hand-checkable modules, estimate == measure, no side effects."""

import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.memory import CATEGORIES, LOSS_MODULE, estimate, measure


def total(output, target):
    """A loss that saves nothing (its backward needs only the shape)."""
    return output.sum()


N = 5


def test_linear_relu_linear_saves_relu_output_once():
    # Linear 1 saves the input (the batch, not charged) and its weight (a parameter); ReLU
    # saves its output, which Linear 2 saves again: one storage, N x 8 float32.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    report = measure(model, torch.randn(N, 4), loss_fn=total)
    assert report.saved_activations == N * 8 * 4
    assert report.by_module == {"1": {"saved_activations": N * 8 * 4, "tensors": 1}}
    assert report.parameters == (4 * 8 + 8 + 8 * 3 + 3) * 4
    assert report.gradients == report.parameters
    assert report.inputs == N * 4 * 4
    assert report.optimizer_state == 0 and report.buffers == 0


def test_maxpool_saves_input_and_int64_indices():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2))
    report = measure(model, torch.randn(3, 1, 4, 4), loss_fn=total)
    conv_out, indices = 3 * 2 * 4 * 4 * 4, 3 * 2 * 2 * 2 * 8
    assert report.saved_activations == conv_out + indices
    assert report.by_module["1"] == {"saved_activations": conv_out + indices, "tensors": 2}


def test_dropout_masks():
    # On CPU nn.Dropout multiplies by a float32 mask; native_dropout keeps a bool mask.
    class NativeDropout(nn.Module):
        def forward(self, x):
            return torch.native_dropout(x, 0.5, True)[0]

    x = torch.randn(N, 4)
    plain = measure(nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5)), x, loss_fn=total)
    assert plain.saved_activations == N * 6 * 4
    native = measure(nn.Sequential(nn.Linear(4, 6), NativeDropout()), x, loss_fn=total)
    assert native.saved_activations == N * 6 * 1


def test_views_of_one_storage_count_once():
    class Views(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x):
            a = self.linear(x).relu()
            return a[:, :2] * a[:, 2:]  # mul saves two views of the relu output

    report = measure(Views(), torch.randn(N, 4), loss_fn=total)
    assert report.saved_activations == N * 4 * 4
    assert report.saved_by_hooks == N * 4 * 4


@pytest.mark.parametrize(("dtype", "size"), [(torch.float64, 8), (torch.float16, 2)])
def test_dtype_sizes(dtype, size):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU()).to(dtype)
    report = measure(model, torch.randn(N, 4, dtype=dtype), loss_fn=total)
    assert report.saved_activations == N * 8 * size
    assert report.parameters == (4 * 8 + 8) * size


def test_loss_saves_are_charged_to_the_loss():
    model = nn.Sequential(nn.Linear(4, 3))
    report = measure(model, (torch.randn(N, 4), torch.randint(3, (N,))))
    # cross-entropy: log_softmax keeps its output, nll_loss a float32 total weight
    assert report.by_module == {LOSS_MODULE: {"saved_activations": N * 3 * 4 + 4, "tensors": 2}}


class FreeingDouble(torch.autograd.Function):
    """y = 2 x that frees its input's storage, as reversible blocks do (backward needs none)."""

    @staticmethod
    def forward(ctx, x):
        y = x * 2
        ctx.save_for_backward(y)
        x.untyped_storage().resize_(0)
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class Freeing(nn.Module):
    def forward(self, x):
        return FreeingDouble.apply(x)


def test_function_freeing_its_input_is_counted_correctly():
    # Linear -> two freeing blocks: block 2 frees block 1's saved output, block 1 frees the
    # linear output; only block 2's output is left.
    model = nn.Sequential(nn.Linear(4, 8), Freeing(), Freeing())
    report = measure(model, torch.randn(N, 4), loss_fn=total)
    assert report.saved_activations == N * 8 * 4
    forward_end = report.timeline["phases"][1][1] - 1
    live = report.timeline["live"]
    assert live["saved_activations"][forward_end] == N * 8 * 4
    assert live["temporaries"][forward_end] == 4  # the loss


def small_models():
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(16, 10),
    )
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 10),
    )
    return {"mlp": mlp, "cnn": cnn}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_estimate_equals_measure(name, optimizer):
    model = small_models()[name]
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = (torch.randn(6, 3, 4, 4), torch.randint(10, (6,)))
    real = measure(model, batch, optimizer=opt).to_dict()
    fake = estimate(model, batch, optimizer=opt).to_dict()
    assert fake.pop("estimated") and not real.pop("estimated")
    assert fake == real


def test_categories_add_up_and_optimizer_state():
    model = small_models()["cnn"]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    report = measure(model, (torch.randn(6, 3, 4, 4), torch.randint(10, (6,))), optimizer=opt)
    assert sum(report.peak_breakdown.values()) == report.peak
    assert set(report.peak_breakdown) == set(CATEGORIES)
    n_tensors = len(list(model.parameters()))
    # exp_avg and exp_avg_sq per parameter, plus a float32 scalar step per parameter
    assert report.optimizer_state == 2 * 4 * n_params + 4 * n_tensors
    assert report.peak <= sum(getattr(report, c) for c in CATEGORIES)
    assert report.peak_phase in ("forward", "backward", "optimizer")
    pixels = 6 * 4 * 4
    assert report.per_pixel["pixels"] == pixels
    assert report.per_pixel["saved_activations"] == report.saved_activations / pixels


def test_measure_leaves_model_optimizer_and_rng_untouched():
    def run(with_meter):
        torch.manual_seed(1)
        model = small_models()["mlp"]
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(6, 3, 4, 4), torch.randint(10, (6,))
        for step in range(2):
            if with_meter and step == 1:
                model.eval()
                measure(model, (x, y), optimizer=opt)
                assert not model.training
                model.train()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.state_dict(), opt.state_dict()["state"], torch.rand(1)

    plain, metered = run(False), run(True)
    for a, b in zip(plain[0].values(), metered[0].values(), strict=True):
        assert torch.equal(a, b)
    for key in plain[1]:
        assert torch.equal(plain[1][key]["momentum_buffer"], metered[1][key]["momentum_buffer"])
    assert torch.equal(plain[2], metered[2])


def test_slices_charge_their_whole_storage():
    data = torch.randn(100, 4)
    report = measure(nn.Linear(4, 2), data[:10], loss_fn=total)
    assert report.inputs == data.nbytes


def test_bad_arguments():
    model = nn.Linear(4, 2)
    with pytest.raises(ShapeError, match="pair"):
        measure(model, "not a batch")
    with pytest.raises(ConfigError, match="steps"):
        measure(model, torch.randn(2, 4), steps=0)
    with pytest.raises(ConfigError, match="scalar"):
        measure(model, torch.randn(2, 4), loss_fn=lambda out, y: out)


def test_timeline_marks_phases_and_modules():
    model = small_models()["cnn"]
    report = measure(model, (torch.randn(2, 3, 4, 4), torch.randint(10, (2,))))
    timeline = report.timeline_dict()
    assert [p[0] for p in timeline["phases"]] == ["forward", "backward"]
    assert [m[0] for m in timeline["modules"]] == ["0", "1", "2", "3", "4", "5"]
    assert max(timeline["live"]["total"]) == report.peak
    assert len(timeline["phase"]) == len(timeline["live"]["total"])
