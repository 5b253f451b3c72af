"""The data-parallel launcher: shards, refusals, and 2-process runs against one process."""

import json

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.data import ArrayDataset
from smallfoot.distributed import ShardedLoader, check_launch, launch
from smallfoot.errors import ConfigError, TrainingError
from smallfoot.runner.run import run_training


def _dataset(n: int) -> ArrayDataset:
    return ArrayDataset(
        torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long), 2, "toy"
    )


def _indices(loader: ShardedLoader, epoch: int) -> list[int]:
    return [int(v) for x, _ in loader.epoch(epoch) for v in x[:, 0]]


@pytest.mark.parametrize("n", [10, 11])
def test_shards_cover_the_set_equally_and_reshuffle_per_epoch(n):
    loaders = [
        ShardedLoader(_dataset(n), 2, rank, 3, seed=0, augment_seed=rank) for rank in range(3)
    ]
    shards = [_indices(loader, 0) for loader in loaders]
    assert {len(s) for s in shards} == {loaders[0].shard_size()} == {-(-n // 3)}
    assert {len(list(loader.epoch(0))) for loader in loaders} == {len(loaders[0])}
    assert sorted(set().union(*shards)) == list(range(n))
    assert _indices(loaders[0], 1) != shards[0]


def test_launch_refuses_what_it_cannot_split():
    with pytest.raises(ConfigError, match="set batch_size to a multiple of 3"):
        check_launch(RunConfig(batch_size=64, device="cpu"), 3, "ddp")
    with pytest.raises(ConfigError, match="unknown sync 'allreduce'"):
        check_launch(RunConfig(device="cpu"), 2, "allreduce")
    with pytest.raises(ConfigError, match="'facto' trains with its own loop"):
        check_launch(RunConfig(method="facto", device="cpu"), 2, "ddp")


def _config(
    tmp_path, name: str, epochs: int = 2, dataset: str = "digits", memory: bool = False
) -> RunConfig:
    return RunConfig(
        dataset=dataset,
        model="mlp",
        epochs=epochs,
        batch_size=64,
        device="cpu",
        out_dir=str(tmp_path),
        run_name=name,
        progress=False,
        measure_memory=memory,
    )


@pytest.mark.slow
def test_two_ddp_processes_reach_the_single_process_accuracy(tmp_path):
    single = run_training(_config(tmp_path, "single"))
    summary = launch(_config(tmp_path, "ddp", memory=True), 2)
    assert summary["world_size"] == 2 and summary["threads_per_rank"] >= 1
    assert summary["batch_size_per_rank"] == 32
    # each rank meters one step of its own module at its own 32 samples
    assert summary["memory"]["batch"] == 32
    assert summary["memory"]["peak"] > summary["memory"]["parameters"] > 0
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    for record in summary["ranks"]:
        assert record["threads"] == summary["threads_per_rank"]
        assert record["peak_memory"] == summary["memory"]["peak"]
    assert abs(summary["test_accuracy"] - single["test_accuracy"]) <= 0.03
    run_dir = tmp_path / "ddp"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # written by rank 0 alone
    assert json.loads((run_dir / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_with_one_line_naming_it(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "summary.json").write_text("{}")
    with pytest.raises(TrainingError, match="rank 0 failed .*run directory .* exists"):
        launch(_config(tmp_path, "taken", epochs=1, dataset="checkerboard"), 2)


def test_ranks_started_with_different_configurations_are_refused(run_ranks):
    ranks = run_ranks("mismatch")
    assert ranks[0]["error"] == (
        "rank 1's configuration differs from rank 0's in model, seed; start every rank with the same config"
    )
    assert ranks[1] == {"returned": None}


@pytest.mark.slow
def test_a_ddp_run_resumes_from_its_checkpoint_on_every_rank(run_ranks, tmp_path):
    ranks = run_ranks("resume")
    first, second = ranks[0]["first"], ranks[0]["second"]
    assert ranks[1] == {"first": None, "second": None}
    assert second["resumed"] and second["epochs"] == 2 and second["world_size"] == 2
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 2
    assert lines[0]["test_accuracy"] == first["test_accuracy"]
    assert lines[1]["test_accuracy"] == second["test_accuracy"]


@pytest.mark.slow
def test_ddp_communication_hooks_train_and_count_what_they_send(run_ranks):
    runs = run_ranks("syncs")[0]
    float32 = runs["ddp-fp16"]["communication"]["float32_bytes_per_step"]
    assert runs["ddp-fp16"]["communication"]["bytes_per_step"] == float32 / 2
    for sync, summary in runs.items():
        assert summary["sync"] == sync and summary["test_accuracy"] > 0.5, sync
        assert 0 < summary["communication"]["bytes_per_step"] < float32
        assert summary["communication"]["step_seconds"] > 0
    bits = runs["ddp-entropy"]["compression"]["gradient_bits_per_value"]
    assert bits == 8 * runs["ddp-entropy"]["communication"]["bytes_per_step"] / (float32 / 4)


@pytest.mark.slow
def test_a_streamed_training_set_is_refused_before_the_run_directory(tmp_path, monkeypatch):
    (tmp_path / "user_stream.py").write_text(
        "import torch\n"
        "class Stream(torch.utils.data.IterableDataset):\n"
        "    def __iter__(self):\n"
        "        return iter([(torch.zeros(2), i % 2) for i in range(8)])\n"
        "def stream():\n"
        "    return Stream(), Stream()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = _config(tmp_path, "stream", epochs=1, dataset="user_stream:stream")
    config.data_options = {"in_memory": False}
    with pytest.raises(TrainingError, match="rank 0 failed .*streams its training set .*--nproc 1"):
        launch(config, 2)
    assert not (tmp_path / "stream").exists()
