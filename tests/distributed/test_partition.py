"""Partition-wise learning: the plan, the boundary filters, and 2-process pipelines on loopback
(trained to a sane accuracy, a killed partition named and resumed, a slow consumer throttling)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from smallfoot.config import RunConfig, save_config
from smallfoot.distributed.partition import (
    BATCH,
    Forwarder,
    PartitionOptions,
    boundaries,
    build_partitions,
    phases,
)
from smallfoot.errors import ConfigError
from smallfoot.methods import load_initial_weights
from smallfoot.models import build_model
from smallfoot.runner.run import load_run_data, run_training
from smallfoot.train.trainer import TrainConfig, Trainer

from .conftest import free_ports


def test_partitions_cover_the_units_and_the_last_ends_with_the_head():
    assert boundaries(5, PartitionOptions(partitions=2)) == [(0, 2), (2, 5)]
    assert boundaries(5, PartitionOptions(split_at=[1, 3])) == [(0, 1), (1, 3), (3, 5)]
    with pytest.raises(ConfigError, match="must be increasing unit counts between 1 and 4"):
        boundaries(5, PartitionOptions(split_at=[3, 3]))
    with pytest.raises(ConfigError, match="use --partitions 3 or a deeper model"):
        boundaries(3, PartitionOptions(partitions=4))


def test_the_partitions_chained_are_the_model():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    parts = build_partitions(model, (1, 8, 8), 10, PartitionOptions(partitions=2), seed=0)
    x = torch.randn(4, 1, 8, 8)
    z = parts[0].body(x)
    assert parts[0].decision(z).shape == (4, 10)  # a decision block of its own
    assert parts[1].input_shape == tuple(z.shape[1:])
    torch.testing.assert_close(parts[1].decision(parts[1].body(z)), model(x))
    assert parts[1].decision[0] is model[-1]  # the model's own head


def test_schedules_bottom_up_and_round_robin_follow_algorithm_4():
    assert phases(PartitionOptions(), 3) == [(None, 3)]
    assert phases(PartitionOptions(schedule="bottom-up"), 3) == [(0, 3), (1, 3)]
    robin = PartitionOptions(schedule="round-robin", robin_epochs=10)
    assert phases(robin, 25) == [(0, 10), (1, 10), (0, 10), (1, 10), (0, 5), (1, 5)]
    with pytest.raises(ConfigError, match="use it with --schedule bottom-up or round-robin"):
        PartitionOptions(feed="checkpoint").validate()


class _Sent:
    """Stands in for an Outbox: records the batches sent."""

    def __init__(self):
        self.batches = []

    def send(self, kind, position, x=None, y=None):
        assert kind == BATCH
        self.batches.append((x, y))


def test_loss_filtering_drops_the_lowest_losses_from_its_epoch_and_repacks_batches():
    options = PartitionOptions(filter="loss", filter_fraction=0.25, filter_from=2)
    forwarder, sent = Forwarder(options, 0, batch_size=6, seed=0), _Sent()
    z, y = torch.arange(8.0)[:, None], torch.arange(8)
    losses = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 6.0, 7.0, 8.0])
    forwarder.add(z, y, losses, epoch=0, outbox=sent, position=0)  # epoch 1: no filtering
    assert forwarder.counts["filtered"] == 0 and [len(b[1]) for b in sent.batches] == [6]
    forwarder.flush(0, sent, 0)
    forwarder.add(z, y, losses, epoch=1, outbox=sent, position=1)
    forwarder.flush(1, sent, 1)
    kept = torch.cat([b[1] for b in sent.batches[2:]])
    assert forwarder.counts["filtered"] == 2 and sorted(kept.tolist()) == [0, 2, 4, 5, 6, 7]
    assert forwarder.counts["forwarded"] == 14


def test_k_filtering_works_on_large_blocks_and_is_capped():
    options = PartitionOptions(filter="k", k=3, k_batch=40, k_cap=0.6)
    forwarder, sent = Forwarder(options, 0, batch_size=16, seed=0), _Sent()
    z = torch.cat([torch.zeros(20, 2), torch.full((20, 2), 10.0)]) + torch.randn(40, 2) * 0.01
    y = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    forwarder.add(z[:16], y[:16], None, 0, sent, 0)
    assert not sent.batches  # waits for a whole block of k_batch samples
    forwarder.add(z[16:], y[16:], None, 0, sent, 0)
    forwarder.flush(0, sent, 0)
    assert forwarder.counts["filtered"] == 24  # all 40 redundant, capped at 60%
    assert [len(b[1]) for b in sent.batches] == [16]


def test_a_model_that_cannot_be_split_is_refused_before_training(tmp_path):
    config = RunConfig(
        dataset="digits",
        model="mlp",
        method="partitionwise",
        method_options={"partitions": 5},
        device="cpu",
        out_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="5 partitions need at least 5 units"):
        run_training(config)
    assert not any(tmp_path.iterdir())


def _config(tmp_path, name: str, epochs: int = 3, **options) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        method="partitionwise",
        method_options={"partitions": 2, "timeout": 60, **options},
        epochs=epochs,
        batch_size=64,
        lr=0.1,
        device="cpu",
        out_dir=str(tmp_path),
        run_name=name,
        progress=False,
        measure_memory=True,
    )


@pytest.mark.slow
def test_two_partitions_train_digits_and_assemble_one_model(tmp_path):
    summary = run_training(_config(tmp_path, "run", filter="loss", filter_from=2))
    assert summary["test_accuracy"] > 0.85
    records = summary["partitionwise"]["partitions"]
    assert [r["units"] for r in records] == [[1, 2], [3, 3]]
    assert records[1]["lr"] == pytest.approx(0.05) and records[0]["peak"] > 0
    assert all(0 <= r["idle_fraction"] <= 1 and r["seconds_busy"] > 0 for r in records)
    # the model.pt of the run is the model evaluated: --init loads it into the plain model
    model = build_model("mlp", (1, 8, 8), 10)
    load_initial_weights(model, Path(summary["run_dir"]) / "model.pt")
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = [m for m in lines if m["partition"] == 1]
    assert [m["filtered"] for m in first][0] == 0  # filtering starts at epoch 2
    for m in first[1:]:
        assert m["filtered"] == pytest.approx(0.25 * m["images"], abs=len(range(0, 1347, 64)))
        assert m["forwarded"] + m["filtered"] == m["images"]
    assert records[0]["images_filtered"] == sum(m["filtered"] for m in first)
    second = [m for m in lines if m["partition"] == 2]
    assert [m["images"] for m in second] == [m["forwarded"] for m in first]
    train, test, _ = load_run_data(_config(tmp_path, "x"))
    evaluator = Trainer(model, train, test, TrainConfig(device="cpu"))
    assert evaluator.evaluate(test)["accuracy"] == pytest.approx(summary["test_accuracy"])


def _start(run_dir: Path, resume: bool = False, nproc: int = 2) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_ports(1)[0]),
        "WORLD_SIZE": str(nproc),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "smallfoot.distributed.partition", str(run_dir)]
    return [
        subprocess.Popen(
            command + (["--resume"] if resume else []),
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(nproc)
    ]


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Wait for every process (killing all at the deadline); ``(returncode, stderr)`` each."""
    deadline, results = time.monotonic() + timeout, []
    try:
        for p in procs:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return results


def _prepare(tmp_path, name: str, **kwargs) -> Path:
    config = _config(tmp_path, name, **kwargs)
    run_dir = tmp_path / name
    run_dir.mkdir()
    save_config(config, run_dir / "config.toml")
    return run_dir


@pytest.mark.slow
def test_a_killed_partition_is_named_by_the_other_and_the_pipeline_resumes(tmp_path):
    """Round-robin (algorithm 4), two epochs per visit, feature checkpoints: partition 2 waits
    while 1 trains, then trains on what 1 fed it and replays it while 1 rests."""
    options = {"schedule": "round-robin", "robin_epochs": 2, "feed": "checkpoint", "delay": 0.02}
    run_dir = _prepare(tmp_path, "run", epochs=4, **options)
    procs = _start(run_dir)
    try:
        checkpoint = run_dir / "partition-2" / "epoch-1" / "checkpoint.pt"
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and time.monotonic() < deadline:
            assert procs[1].poll() is None, procs[1].communicate()[1][-2000:]
            time.sleep(0.05)
        assert checkpoint.exists()
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        (code, err), _ = _finish(procs, timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - killed_at < 60
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: partition 1 stopped: partition 2 is gone ("
    )
    assert lines[0].endswith(f"; continue with `smallfoot train --resume {run_dir}`")

    results = _finish(_start(run_dir, resume=True), timeout=150)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] and summary["test_accuracy"] > 0.8
    records = summary["partitionwise"]["partitions"]
    assert [r["epochs_trained"] for r in records] == [4, 4]
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    modes = {p: [m["mode"] for m in lines if m["partition"] == p] for p in (1, 2)}
    assert modes == {
        1: ["train", "train", "feed", "wait"] * 2,
        2: ["wait", "wait", "train", "replay"] * 2,
    }
    second = [m for m in lines if m["partition"] == 2]
    assert second[3]["images"] == second[2]["images"] == lines[4]["forwarded"] > 0


@pytest.mark.slow
def test_a_slow_consumer_throttles_its_producer_to_the_queue(tmp_path):
    run_dir = _prepare(tmp_path, "slow", epochs=1, queue=2, delay=0.05)
    results = _finish(_start(run_dir), timeout=150)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    producer, consumer = json.loads((run_dir / "summary.json").read_text())["partitionwise"][
        "partitions"
    ]
    batch_bytes = 64 * 256 * 4 + 64 * 8 + 8 * 8  # features, labels and header of one batch
    assert producer["max_in_flight"] == 2
    assert producer["max_in_flight_bytes"] <= 2 * batch_bytes
    # the producer spent most of its time waiting for credits of the sleeping consumer
    batches = consumer["images_trained"] // 64
    assert producer["seconds_waiting"] > 0.5 * 0.05 * batches
    assert producer["idle_fraction"] > 0.5


def test_decision_blocks_are_the_layerwise_ones():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    parts = build_partitions(
        model, (1, 8, 8), 3, PartitionOptions(split_at=[1], decision_convs=1), seed=0
    )
    assert isinstance(parts[0].decision[0], nn.Conv2d)
    assert parts[0].decision[-1].out_features == 3


@pytest.mark.slow
def test_a_data_parallel_partition_trains_the_weights_of_a_single_process_one(tmp_path):
    # 2 partitions of 2 ranks each (4 processes) against 2 single-process partitions: the
    # group's rows are weighted so its averaged gradient is the whole batch's (mlp: no BN)
    # 1,281 images: every epoch ends with a batch of one row, which both ranks train whole
    runs = {
        ranks: run_training(
            dataclasses.replace(
                _config(tmp_path, f"ranks{ranks}", epochs=2, ranks_per_partition=ranks),
                train_limit=1281,
            )
        )
        for ranks in (1, 2)
    }
    weights = {
        ranks: torch.load(Path(s["run_dir"]) / "model.pt", weights_only=False)["model"]
        for ranks, s in runs.items()
    }
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[2][name], tensor, rtol=0, atol=1e-4)
    one, two = (runs[r]["partitionwise"]["partitions"] for r in (1, 2))
    assert [r["images_trained"] for r in two] == [r["images_trained"] for r in one]
    assert runs[2]["test_accuracy"] == pytest.approx(runs[1]["test_accuracy"], abs=0.01)
    # the meter reports one rank's step: half the batch
    assert "one of its 2 ranks" in runs[2]["memory"]["stage"]
    assert runs[2]["memory"]["peak"] < runs[1]["memory"]["peak"]


def test_a_data_parallel_partition_needs_a_row_per_rank(tmp_path):
    config = dataclasses.replace(_config(tmp_path, "tiny", ranks_per_partition=4), batch_size=2)
    with pytest.raises(ConfigError, match="every rank of a partition needs a row"):
        run_training(config)


@pytest.mark.slow
def test_ctrl_c_stops_every_partition_with_one_line_and_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    command = [str(Path(sys.executable).with_name("smallfoot")), "train", "--dataset", "digits"]
    command += ["--model", "mlp", "--method", "partitionwise", "--partitions", "2"]
    command += ["--epochs", "200", "--device", "cpu", "--no-memory", "--no-progress"]
    command += ["--out-dir", str(tmp_path), "--run-name", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LOGLEVEL", None)
    # its own session, so that the signal goes to every process as a terminal's Ctrl-C does
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "partition-2" / "epoch-1" / "checkpoint.pt").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stderr.read()
            time.sleep(0.02)
        os.killpg(launcher.pid, signal.SIGINT)
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 130
    assert err.strip().splitlines() == [
        "interrupted: partition-wise run stopped by SIGINT; every partition was stopped; "
        f"continue with `smallfoot train --resume {run_dir}`"
    ]
