"""k-filtering, k-redundancy, loss filtering, online filters and the per-layer diagnostics."""

import pytest
import torch
from torch import nn

from smallfoot import cli
from smallfoot.data import ArrayDataset, load_dataset
from smallfoot.data.filtering import (
    KNN_CHUNK,
    FilterSpec,
    apply_filter,
    default_layers,
    k_filter,
    k_redundancy,
    layer_k_redundancy,
    layer_lsd,
    least_squares_distance,
    loss_filter,
    nearest_neighbours,
    neighbour_purity,
    representations,
    select_removed,
)
from smallfoot.errors import ConfigError, ShapeError
from smallfoot.losses import build_loss
from smallfoot.train import TrainConfig, Trainer
from smallfoot.train.filtering import LossFilter, OnlineKFilter


def two_clusters_and_a_boundary():
    """Class 0: a tight cluster around (0, 0); class 1: around (10, 0); plus a boundary pair
    at (5, 0) / (5.2, 0) of classes 0 and 1."""
    cluster0 = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [-0.1, 0.0], [0.0, -0.1]])
    cluster1 = cluster0 + torch.tensor([10.0, 0.0])
    boundary = torch.tensor([[5.0, 0.0], [5.2, 0.0]])
    x = torch.cat([cluster0, cluster1, boundary]).double()
    y = torch.tensor([0] * 5 + [1] * 5 + [0, 1])
    return x, y


def test_criterion_on_clusters_and_boundary():
    x, y = two_clusters_and_a_boundary()
    result = k_filter(x, y, k=3)
    # cluster points: their 3 nearest neighbours are in their own cluster; the boundary pair's
    # nearest neighbour is each other, of the other class
    assert result.removed.tolist() == list(range(10))
    assert result.kept.tolist() == [10, 11]
    assert result.redundancy == pytest.approx(10 / 12)
    # with k = 5, a cluster point's 5th neighbour is the boundary point: only class 0 points
    # see the class-0 boundary point (5, 0) first, class 1 points see (5.2, 0) (their class)
    purity = neighbour_purity(x, y, 6)
    assert purity[10].item() == 0 and purity[11].item() == 0
    assert (purity[:5] == 5).all()  # 4 cluster mates, the class-0 boundary point, then class 1
    assert (purity[5:10] == 5).all()
    assert k_redundancy(x, y, [1, 5, 6]) == {1: 10 / 12, 5: 10 / 12, 6: 0.0}


def test_a_sample_is_never_its_own_neighbour():
    # one point of class 1 amid class 0: were it its own neighbour it would look redundant
    x = torch.tensor([[0.0], [1.0], [2.5], [3.2]]).double()
    y = torch.tensor([0, 0, 1, 0])
    purity = neighbour_purity(x, y, 1)
    assert purity.tolist() == [1, 1, 0, 0]


def test_duplicates_are_ordinary_neighbours():
    x = torch.tensor([[0.0], [0.0], [0.1], [5.0], [5.0]]).double()
    y = torch.tensor([0, 1, 0, 1, 1])
    # rows 0 and 1 are duplicates with different labels: each is the other's nearest neighbour
    # (distance 0), so neither is redundant; the (5.0) pair share their label
    purity = neighbour_purity(x, y, 2)
    assert purity[:2].tolist() == [0, 0]
    assert purity[3:].tolist() == [1, 1]  # second neighbour (0.1) is of class 0
    assert k_filter(x, y, 2).removed.tolist() == []
    assert {3, 4} <= set(k_filter(x, y, 1).removed.tolist())


def test_k_larger_than_a_class_is_never_redundant_and_k_beyond_the_set_keeps_all():
    x = (
        torch.cat([torch.zeros(3, 2), torch.full((10, 2), 5.0)]).double()
        + torch.arange(13.0)[:, None].double() * 1e-3
    )
    y = torch.tensor([0] * 3 + [1] * 10)
    redundancy = k_redundancy(x, y, [2, 3, 9, 12, 50])
    # class 0 has 3 members: with k >= 3 each of them needs a class-1 neighbour -> kept
    purity = neighbour_purity(x, y, 12)
    assert (purity[:3] == 2).all()
    assert redundancy[2] == 1.0
    assert redundancy[3] == 10 / 13 and redundancy[9] == 10 / 13
    assert redundancy[12] == 0.0 and redundancy[50] == 0.0  # fewer than k neighbours exist


@pytest.mark.parametrize("batch_size", [None, 64])
def test_chunked_and_unchunked_agree(batch_size):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    y = (x[:, 0] + 0.3 * torch.randn(300, generator=generator, dtype=torch.float64) > 0).long()
    whole = neighbour_purity(x, y, 12, batch_size=batch_size, chunk_size=10_000)
    for chunk in (1, 7, 64):
        assert torch.equal(
            neighbour_purity(x, y, 12, batch_size=batch_size, chunk_size=chunk), whole
        )


def test_exact_search_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(80, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=generator)
    distance = torch.cdist(x, x)
    distance.fill_diagonal_(float("inf"))
    neighbours = distance.argsort(dim=1)[:, :6]
    expected = (y[neighbours] == y[:, None]).long().cumprod(1).sum(1)
    assert torch.equal(neighbour_purity(x, y, 6, chunk_size=9), expected)


def test_mini_batch_search_stays_within_batches():
    x, y = two_clusters_and_a_boundary()
    # batches of 2 (6 blocks): each sample has one neighbour, in its own block only
    purity = neighbour_purity(x, y, 5, batch_size=2, seed=3)
    assert purity.max() <= 1
    assert torch.equal(purity, neighbour_purity(x, y, 5, batch_size=2, seed=3))


def test_cap_limits_the_fraction_removed():
    x, y = two_clusters_and_a_boundary()
    result = k_filter(x, y, 3, max_fraction=0.5)
    assert len(result.removed) == 6 and result.redundancy == 0.5
    assert result.redundant_fraction == pytest.approx(10 / 12)
    assert set(result.removed.tolist()) <= set(range(10))
    assert torch.equal(result.removed, k_filter(x, y, 3, max_fraction=0.5).removed)
    with pytest.raises(ConfigError):
        select_removed(torch.ones(3, dtype=torch.bool), 1.5)


def test_bad_input_raises():
    x, y = two_clusters_and_a_boundary()
    with pytest.raises(ConfigError):
        k_filter(x, y, 0)
    with pytest.raises(ShapeError):
        k_filter(x, y[:-1], 3)
    with pytest.raises(ConfigError):
        k_filter(x, y, 3, batch_size=1)
    with pytest.raises(ConfigError):
        k_redundancy(x, y, [])


def dataset(n=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    x = torch.randn(n, 1, 4, 4, generator=generator) + 2.0 * y[:, None, None, None].float()
    return ArrayDataset(x, y, 3, "toy")


def test_filter_spec_and_apply_filter():
    assert FilterSpec.parse("k=10,cap=0.6,knn_chunk=500,seed=2") == FilterSpec(10, 0.6, 500, 2)
    assert FilterSpec.parse({"k": 5}) == FilterSpec(5, knn_chunk=KNN_CHUNK)  # the thesis' way
    assert FilterSpec.parse("k=5,knn_chunk=0").knn_chunk == 0  # exact
    with pytest.raises(ConfigError, match="knn_chunk"):
        FilterSpec.parse("k=42,batch=6000")  # a k-NN chunk, not a training batch size
    for bad in ("k", "cap=0.5", "k=ten", "k=0", "k=3,foo=1", "k=3,knn_chunk=1", "k=3,loss=0.2"):
        with pytest.raises(ConfigError):
            FilterSpec.parse(bad)
    data = dataset()
    filtered, record = apply_filter(data, "k=5")
    assert record["kept"] == len(filtered) == 200 - len(record["removed"])
    assert record["total"] == 200 and record["k"] == 5
    assert record["redundancy"] == pytest.approx(len(record["removed"]) / 200)
    assert sum(record["removed_per_class"]) == len(record["removed"])
    kept = sorted(set(range(200)) - set(record["removed"]))
    assert torch.equal(filtered.x, data.x[kept])


def test_online_filter_specs():
    spec = FilterSpec.parse("k=10,online=true,from=2,cap=0.6")
    assert (spec.k, spec.online, spec.start, spec.cap, spec.every) == (10, True, 2, 0.6, 1)
    loss = FilterSpec.parse("loss=0.25,from=3,every=2,batch=512")
    assert (loss.loss, loss.online, loss.start, loss.every, loss.batch) == (0.25, True, 3, 2, 512)
    for bad, message in (
        ("k=3,from=2", "add online=true"),
        ("loss=0.2,online=false", "runs online"),
        ("loss=0.3,cap=0.5", "apply to k-filters"),
        ("loss=1.5", r"fraction in \[0, 1\)"),
        ("k=3,online=maybe", "online must be true or false"),
        ("k=3,online=true,from=0", "at least 1"),
        ("k=3,cap=1.5", r"cap must be a fraction in \(0, 1\]"),
    ):
        with pytest.raises(ConfigError, match=message):
            FilterSpec.parse(bad)


def test_online_filters_run_from_a_run_config(tmp_path):
    import json

    from smallfoot.config import RunConfig
    from smallfoot.runner import run_training

    def run(name, spec, **overrides):
        config = RunConfig(
            dataset="digits", model="mlp", epochs=3, filter=spec, out_dir=str(tmp_path),
            run_name=name, progress=False, measure_memory=False, train_limit=400,
            test_limit=100, **overrides,
        )  # fmt: skip
        run_training(config)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["kept_fraction"] for line in lines]

    assert run("loss", "loss=0.5,from=2,batch=100") == [1.0, 0.5, 0.5]
    kept = run("knn", "k=3,online=true,from=3,cap=0.2,knn_chunk=0")
    assert kept[:2] == [1.0, 1.0] and 0.8 <= kept[2] < 1.0
    record = json.loads((tmp_path / "loss" / "data.json").read_text())["filter"]
    assert record == {"online": "loss=0.5,from=2,batch=100"}
    with pytest.raises(ConfigError, match=r"own loop; filter offline \(--filter k=3,cap=0.2\)"):
        run("closed", "k=3,online=true,from=2,cap=0.2", method="closedform")
    with pytest.raises(ConfigError, match="after the last of --epochs 3"):
        run("late", "loss=0.5,from=4")
    with pytest.raises(ConfigError, match="layer=9: the model has no module of that name"):
        run("layer", "k=3,online=true,from=2,layer=9")


def test_loss_filter_drops_exactly_the_requested_fraction():
    losses = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 0.5, 9.0, 8.0, 7.0, 6.0])
    assert loss_filter(losses, 0.3).tolist() == [0, 2, 4, 6, 7, 8, 9]
    # batches of 4, 4, 2: floor(0.5 * len) lowest dropped in each
    assert loss_filter(losses, 0.5, batch_size=4).tolist() == [0, 2, 6, 7, 8]
    assert len(loss_filter(torch.rand(1000), 0.25, batch_size=100)) == 750
    assert loss_filter(losses, 0.0).tolist() == list(range(10))
    with pytest.raises(ConfigError):
        loss_filter(losses, 1.0)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )  # fmt: skip


def train(callbacks, seed=0, epochs=3):
    data = dataset(seed=seed)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, seed=seed)
    loss_fn, predict = build_loss("softmax-ce", 3)
    trainer = Trainer(
        tiny_cnn(), data, None, config, loss_fn, callbacks=callbacks, progress=False,
        predict_fn=predict,
    )  # fmt: skip
    trainer.fit()
    return trainer


def test_online_k_filter_schedule_and_reproducibility():
    callback = OnlineKFilter(k=5, every=2, warmup=1, max_fraction=0.4, batch_size=None)
    trainer = train([callback], epochs=4)
    history = trainer.history
    assert history[0]["kept_fraction"] == 1.0
    assert history[1]["kept_fraction"] == pytest.approx(0.6)  # capped at 40 % removed
    assert history[2]["kept_fraction"] == history[1]["kept_fraction"]
    assert history[1]["filter_seconds"] > 0 and history[2]["filter_seconds"] == 0
    assert len(trainer.train_set) == 200  # the full set is given back
    again = train(
        [OnlineKFilter(k=5, every=2, warmup=1, max_fraction=0.4, batch_size=None)], epochs=4
    )
    assert torch.equal(callback.kept, again.callbacks[0].kept)
    for a, b in zip(trainer.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_online_k_filter_on_a_layer_representation():
    callback = OnlineKFilter(k=3, layer="4", batch_size=100)
    trainer = train([callback], epochs=1)
    assert 0 < trainer.history[0]["kept_fraction"] <= 1.0
    with pytest.raises(ConfigError, match="layer=nope: the model has no module of that name"):
        train([OnlineKFilter(k=3, layer="nope")], epochs=1)


def test_loss_filter_callback_keeps_the_requested_share_per_large_batch():
    callback = LossFilter(0.25, batch_size=64)
    trainer = train([callback], epochs=2)
    # blocks of 64, 64, 64, 8 drop 16, 16, 16, 2
    assert trainer.history[0]["kept_fraction"] == (200 - 50) / 200
    losses = callback.sample_losses(trainer, dataset())
    assert losses.shape == (200,)


def test_representations_and_layer_diagnostics():
    model = tiny_cnn()
    data = dataset(n=120)
    assert default_layers(model) == ["1", "4", "5"]
    reps = representations(model, data.x, batch_size=50)
    assert list(reps) == ["input", "1", "4", "5"]
    assert reps["1"].shape == (120, 64) and reps["5"].shape == (120, 3)
    assert model.training  # mode restored
    redundancy = layer_k_redundancy(model, data, ks=(3, 5))
    assert set(redundancy) == {"input", "1", "4", "5"}
    assert all(0.0 <= v <= 1.0 for layer in redundancy.values() for v in layer.values())
    lsd = layer_lsd(model, data)
    assert all(value >= 0 for value in lsd.values())


def test_least_squares_distance():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    onehot = torch.eye(3)[labels]
    assert least_squares_distance(onehot, labels, 3) == pytest.approx(0.0, abs=1e-12)
    # a constant feature explains only the class means: residual = 1 - sum_c p_c^2 = 2/3
    assert least_squares_distance(torch.ones(6, 1), labels, 3) == pytest.approx(2 / 3)
    # Y - Z Z^+ Y by hand for a random Z
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    y = onehot.double()
    expected = float((y - z @ torch.linalg.pinv(z) @ y).pow(2).sum() / 6)
    assert least_squares_distance(z, labels, 3) == pytest.approx(expected)


def test_filter_command_json(run_cli):
    import json

    code, out, _ = run_cli("filter", "--dataset", "digits", "--k", "5,10", "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"5", "10"}
    data = load_dataset("digits", "train")
    expected = k_redundancy(data.x, data.y, [5, 10])
    for k, row in report.items():
        assert row["redundancy"] == expected[int(k)]
        assert row["kept"] + row["removed"] == row["total"] == len(data)
    code, _, err = run_cli("filter", "--dataset", "digits", "--k", "0")
    assert code == 2 and "positive integers" in err


def test_train_with_filter_records_what_was_removed(tmp_path):
    import json

    from smallfoot.config import RunConfig
    from smallfoot.runner import run_training

    config = RunConfig(
        dataset="digits", model="mlp", epochs=1, filter="k=10", out_dir=str(tmp_path),
        run_name="run", progress=False, measure_memory=False, train_limit=400, test_limit=100,
    )  # fmt: skip
    summary = run_training(config)
    record = json.loads((tmp_path / "run" / "data.json").read_text())["filter"]
    assert summary["train_samples"] == record["kept"] == 400 - len(record["removed"])
    assert 0 < record["redundancy"] < 1 and record["k"] == 10


def test_symmetric_tiles_match_brute_force():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(70, 4, generator=generator, dtype=torch.float64)
    distance = torch.cdist(x, x)
    distance.fill_diagonal_(float("inf"))
    expected = distance.argsort(dim=1)[:, :9]
    for tile in (5, 16, 70, None):
        assert torch.equal(nearest_neighbours(x, 9, tile), expected)


def test_filter_command_defaults_to_the_thesis_chunks(run_cli):
    import inspect
    import json

    default = inspect.signature(cli.filter_command).parameters["knn_chunk"].default.default
    assert default == KNN_CHUNK
    data = load_dataset("digits", "train")
    for chunk, batch_size in (("500", 500), ("0", None)):
        code, out, _ = run_cli("filter", "--dataset", "digits", "--k", "5", "--knn-chunk",
            chunk, "--json",
        )  # fmt: skip
        assert code == 0
        expected = k_redundancy(data.x, data.y, [5], batch_size=batch_size)[5]
        assert json.loads(out)["5"]["redundancy"] == expected


@pytest.mark.slow
def test_k_filter_and_train_a_file_set_four_times_the_memory_cap(file_rows_peak_kib):
    """A 128 MiB file-backed set, read a batch (and a k-NN chunk) at a time, k-filtered and
    trained for an epoch: the process's peak memory grows by under 32 MiB over the same run on
    a 1,024-row file (a quarter of the set's size; measured with getrusage in a fresh
    process)."""
    args = (
        "--model", "mlp", "--model-opt", "widths=16", "--filter", "k=3,knn_chunk=256",
        "--epochs", "1", "--batch-size", "256", "--no-progress", "--no-memory",
    )  # fmt: skip
    growth_mib = (file_rows_peak_kib(args, 16384) - file_rows_peak_kib(args, 1024)) / 1024
    assert growth_mib < 32, f"peak memory grew by {growth_mib:.1f} MiB for a 128 MiB set"
