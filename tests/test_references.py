"""A user's own model and data by reference (``package.module:function``), from Python and
through the command line."""

import json
import textwrap

import pytest
import torch

from smallfoot.data import BatchLoader, StreamDataset, load_dataset
from smallfoot.errors import ConfigError
from smallfoot.models import build_model
from smallfoot.references import resolve_reference

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def small_cnn(num_classes, width=8):
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes),
        )

    def fixed_head():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

    def not_a_module(num_classes):
        return "model"

    def blobs(n=120, seed=0):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
        half = n * 3 // 4
        return TensorDataset(x[:half], y[:half]), TensorDataset(x[half:], y[half:])

    def single():
        return TensorDataset(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))

    class CountingDataset(torch.utils.data.Dataset):
        # blobs that count the items read; targets as torchvision's datasets have them

        def __init__(self, data):
            self.data, self.reads = data, 0
            self.targets = data.tensors[1].tolist()

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            self.reads += 1
            return self.data[index]

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([(torch.zeros(4), 0)])

    def stream():
        return Stream(), Stream()

    def counting_blobs(n=120):
        train, test = blobs(n)
        return CountingDataset(train), CountingDataset(test)
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_nets"


def test_model_by_reference_gets_num_classes_and_options(user_module):
    model = build_model(f"{user_module}:small_cnn", (1, 8, 8), 5, width=4)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 5)
    assert model[0].out_channels == 4 and model.training


@pytest.mark.parametrize(
    "reference, message",
    [
        ("nosuchpackage.nets:f", "cannot import 'nosuchpackage.nets'"),
        ("user_nets:missing", "has no attribute 'missing'"),
        ("user_nets:", "must look like package.module:function"),
        ("user_nets:not_a_module", "returned a str, not a torch.nn.Module"),
        ("user_nets:fixed_head", "outputs of shape (1, 3)"),
    ],
)
def test_bad_model_references_are_one_line(user_module, reference, message):
    with pytest.raises(ConfigError, match="^.*$") as error:
        build_model(reference, (1, 8, 8), 10)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_dataset_by_reference_reads_a_torch_dataset(user_module):
    train = load_dataset(f"{user_module}:blobs", "train", n=40)
    test = load_dataset(f"{user_module}:blobs", "test", n=40)
    assert (len(train), len(test)) == (30, 10)
    assert train.input_shape == (1, 8, 8) and train.num_classes == 3
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert len(load_dataset(f"{user_module}:blobs", "train", limit=7)) == 7


def test_a_dataset_not_in_memory_reads_only_the_items_indexed(user_module):
    train = load_dataset(f"{user_module}:counting_blobs", "train", in_memory=False)
    source = train.x.dataset
    reads = source.reads  # item 0, for the input shape; labels come from .targets
    assert reads == 1 and train.input_shape == (1, 8, 8) and train.num_classes == 3
    eager = load_dataset(f"{user_module}:blobs", "train")
    index = torch.tensor([5, 0, 17])
    assert torch.equal(train.x[index], eager.x[index]) and torch.equal(train.y, eager.y)
    assert source.reads == reads + 3
    limited = load_dataset(f"{user_module}:counting_blobs", "train", in_memory=False, limit=7)
    assert len(limited) == 7 and limited.x.source.dataset.reads == 1  # the subset stays lazy
    x, _ = next(iter(BatchLoader(limited, 4, workers=1).epoch(0)))
    assert x.shape == (4, 1, 8, 8)


def test_an_iterable_dataset_streams_or_is_read_into_memory(user_module):
    streamed = load_dataset(f"{user_module}:stream", "train", in_memory=False)
    assert isinstance(streamed, StreamDataset) and len(streamed) == 1
    assert load_dataset(f"{user_module}:stream", "train").x.shape == (1, 4)


def test_a_dataset_function_must_return_a_pair(user_module):
    with pytest.raises(ConfigError, match=r"must return a \(train, test\) pair"):
        load_dataset(f"{user_module}:single", "train")


def test_resolve_reference_rejects_non_callables(user_module):
    with pytest.raises(ConfigError, match="not a function"):
        resolve_reference("user_nets:torch", "--model")  # a module is no builder


ANY_MODULE = ["baseline", "accumulate", "checkpoint", "offload", "facto", "subspace", "layerwise"]
"""Methods that train a user's module as it is (layer-wise: units from an nn.Sequential)."""


@pytest.mark.slow
@pytest.mark.parametrize("method", [*ANY_MODULE, "manifold"])
def test_train_a_user_model_on_user_data_through_the_cli(user_module, run_cli, tmp_path, method):
    code, out, err = run_cli(
        "train", "--model", f"{user_module}:small_cnn", "--dataset", f"{user_module}:blobs",
        "--method", method, "--epochs", "3", "--batch-size", "16", "--lr", "0.05",
        "--no-progress", "--out-dir", str(tmp_path), "--run-name", method,
        *(["--dim", "8"] if method == "subspace" else []),  # 12 samples from 90 images
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    # manifold swaps the head for its bottleneck cascade, and says so
    suffix = "_bottleneck" if method == "manifold" else ""
    assert summary["model"] == f"{user_module}:small_cnn{suffix}" and summary["method"] == method
    assert summary["test_accuracy"] > 0.5


@pytest.mark.parametrize(
    "method, message",
    [
        ("reversible", "cannot make user_nets:small_cnn invertible"),
        ("closedform", "fits the 'mlp'"),
    ],
)
def test_methods_that_need_their_own_architecture_refuse_a_user_model(
    user_module, run_cli, tmp_path, method, message
):
    code, _, err = run_cli(
        "train", "--model", f"{user_module}:small_cnn", "--dataset", f"{user_module}:blobs",
        "--method", method, "--out-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_memory_of_a_referenced_model_equals_the_same_module(user_module, run_cli):
    from smallfoot.memory import measure

    code, out, err = run_cli(
        "memory", "--model", f"{user_module}:small_cnn", "--input", "1x8x8", "--classes", "3",
        "--batch-size", "4", "--json",
    )  # fmt: skip
    assert code == 0, err
    by_reference = json.loads(out)
    torch.manual_seed(0)
    model = build_model(f"{user_module}:small_cnn", (1, 8, 8), 3)
    batch = (torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)))
    direct = measure(model, batch, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert by_reference["saved_activations"] == direct.saved_activations
