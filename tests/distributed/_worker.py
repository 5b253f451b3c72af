"""One rank of a distributed test; run as ``python _worker.py SCENARIO OUT_DIR`` with torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Saves ``OUT_DIR/rank<r>.pt``."""

import datetime
import faulthandler
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from smallfoot.compress import CodecConfig, quantise
from smallfoot.config import RunConfig
from smallfoot.distributed import (
    EntropyHookState,
    average_parameters,
    end_process_group,
    entropy_hook,
    train_rank,
)
from smallfoot.errors import ConfigError, TrainingError


def model(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)


def batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(8, 6, generator=generator, dtype=dtype), torch.randint(
        3, (8,), generator=generator
    )


def grads(net: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in net.parameters()]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def ddp_grads(rank: int, world: int) -> dict:
    """Plain DDP (float64) and the entropy hook (float32) on each rank's half of one batch."""
    out = {}
    x, y = batch(torch.float64)
    reference = model(torch.float64)
    nn.functional.cross_entropy(reference(x), y).backward()
    out["reference"] = grads(reference)
    ddp = DistributedDataParallel(model(torch.float64))
    shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
    nn.functional.cross_entropy(ddp(x[shard]), y[shard]).backward()
    out["plain"] = grads(ddp.module)

    x, y = x.float(), y
    ddp = DistributedDataParallel(model(torch.float32))
    state = EntropyHookState(CodecConfig(c=6, m=4))
    inputs, errors = [], []

    def recording_hook(state, bucket):
        inputs.append(bucket.buffer().clone())
        future = entropy_hook(state, bucket)
        errors.append(state.errors[bucket.index()].clone())
        return future

    ddp.register_comm_hook(state, recording_hook)
    for _ in range(2):
        ddp.zero_grad()
        nn.functional.cross_entropy(ddp(x[shard]), y[shard]).backward()
        out.setdefault("hooked", []).append(grads(ddp.module))
    out["inputs"], out["errors"] = inputs, errors
    out["hash"] = digest(out["hooked"][-1])
    out["bits"] = 8 * state.bytes_sent / state.values_sent
    return out


def average(rank: int, world: int) -> dict:
    """Models that differ per rank are averaged through compressed packages."""
    net = nn.Sequential(nn.Linear(20, 30), nn.BatchNorm1d(30), nn.Linear(30, 4))
    torch.manual_seed(rank)
    for p in net.parameters():
        p.data.normal_(0, 0.1 * (rank + 1))
    net[1].running_mean.normal_()
    before = {n: t.clone() for n, t in net.state_dict().items()}
    stats = average_parameters(net, CodecConfig(c=6, m=4))
    after = {n: t.clone() for n, t in net.state_dict().items()}
    quantised = {
        n: quantise(before[n], CodecConfig(c=6, m=4), n) for n, _ in net.named_parameters()
    }
    return {
        "before": before,
        "after": after,
        "quantised": quantised,
        "hash": digest(after.values()),
        "stats": stats,
    }


def average_error_feedback(rank: int, world: int) -> dict:
    """The same net on both ranks; before each of 30 syncs every weight grows by a tenth of a
    quantisation bin, once with error feedback and once without. Returns the weights before
    and after, the total change, the first bin width and the errors still owed."""
    config = CodecConfig(bits=5)
    out = {}
    for feedback in (False, True):
        torch.manual_seed(0)
        net = nn.Linear(40, 20, bias=False)
        weight = net.weight.data
        start = weight.clone()
        bin_width = float(weight.max() - weight.min()) / 2**config.bits
        errors = {} if feedback else None
        for _ in range(30):
            weight += 0.1 * bin_width
            average_parameters(net, config, errors=errors)
        out[feedback] = {
            "start": start,
            "end": weight.clone(),
            "change": 30 * 0.1 * bin_width,
            "bin_width": bin_width,
            "errors": errors,
            "hash": digest([weight]),
        }
    return out


def mismatch(rank: int, out_dir: str) -> dict:
    """``train_rank`` started with a different seed and model on rank 1 (its own process group)."""
    config = RunConfig(seed=rank, model="cnn4" if rank else "mlp", out_dir=out_dir, device="cpu")
    try:
        return {"returned": train_rank(config, "ddp", CodecConfig(), 1)}
    except ConfigError as error:
        return {"error": str(error)}


def checkerboard_run(out_dir: str, **changes) -> RunConfig:
    """A short mlp run on 512 checkerboard points (256 test), ``changes`` applied."""
    fields = dict(
        dataset="checkerboard",
        model="mlp",
        epochs=1,
        batch_size=64,
        train_limit=512,
        test_limit=256,
        device="cpu",
        out_dir=out_dir,
        run_name="run",
        progress=False,
        measure_memory=False,
    )
    return RunConfig(**{**fields, **changes})


def resume(rank: int, out_dir: str) -> dict:
    """A 1-epoch DDP run, then the same run resumed from its directory for a second epoch."""
    config = checkerboard_run(out_dir)
    first = train_rank(config, "ddp", CodecConfig(), 1)
    config.epochs = 2
    os.environ["MASTER_PORT"] = os.environ["SECOND_PORT"]  # a fresh rendezvous
    second = train_rank(config, "ddp", CodecConfig(), 1, resume_dir=f"{out_dir}/run")
    return {"first": first, "second": second}


def resume_average_ef(rank: int, out_dir: str) -> dict:
    """Averaging with error feedback: 2 epochs straight, and 1 epoch resumed for a second.
    Returns (rank 0) both runs' final parameters and the per-rank states saved."""
    # a constant rate: the 1-epoch run's rates are the 2-epoch run's first
    config = checkerboard_run(out_dir, epochs=2, run_name="straight", schedule="constant")
    codec = CodecConfig(c=2, m=4)  # coarse: large errors to carry
    straight = train_rank(config, "average-ef", codec, 1)
    os.environ["MASTER_PORT"] = os.environ["SECOND_PORT"]
    config.epochs, config.run_name = 1, "split"
    train_rank(config, "average-ef", codec, 1)
    os.environ["MASTER_PORT"] = os.environ["THIRD_PORT"]
    config.epochs = 2
    resumed = train_rank(config, "average-ef", codec, 1, resume_dir=f"{out_dir}/split")
    if rank != 0:
        return {}
    saved = {
        name: torch.load(Path(run["run_dir"]) / "checkpoint.pt", weights_only=False)
        for name, run in (("straight", straight), ("resumed", resumed))
    }
    return {
        "straight": saved["straight"]["model"],
        "resumed": saved["resumed"]["model"],
        "ranks": saved["resumed"]["callbacks"][-1]["ranks"],
    }


def lost_rank(rank: int, out_dir: str) -> dict:
    """Rank 1 kills itself (SIGKILL) once rank 0 has written the first epoch's metrics; rank 0
    reports what ``train_rank`` raised and how long after the kill."""
    config = checkerboard_run(out_dir, epochs=50, train_limit=2048)
    metrics = Path(out_dir) / "run" / "metrics.jsonl"
    if rank == 1:

        def die() -> None:
            while not (metrics.exists() and metrics.read_text().strip()):
                time.sleep(0.01)
            Path(out_dir, "killed").write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=die, daemon=True).start()
    try:
        train_rank(config, "ddp", CodecConfig(), 1)
    except TrainingError as error:
        stopped = time.time()
        killed = float(Path(out_dir, "killed").read_text())
        return {"error": str(error), "seconds": stopped - killed}
    return {"error": None}


def syncs(rank: int, out_dir: str) -> dict:
    """One short run per DDP communication hook (each with its own rendezvous port)."""
    out = {}
    for sync, port in zip(
        ("ddp-entropy", "ddp-fp16", "ddp-powersgd"), ("MASTER", "SECOND", "THIRD"), strict=True
    ):
        os.environ["MASTER_PORT"] = os.environ[f"{port}_PORT"]
        config = RunConfig(
            dataset="digits",
            model="mlp",
            epochs=1,
            batch_size=64,
            device="cpu",
            out_dir=out_dir,
            run_name=sync,
            progress=False,
            measure_memory=False,
        )
        out[sync] = train_rank(config, sync, CodecConfig(), 1)
    return out


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    # a rank that crashes, or still runs after this long, prints every thread's stack
    faulthandler.enable()
    faulthandler.dump_traceback_later(float(os.environ.get("HANG_REPORT_SECONDS", 100)))
    scenarios = {
        "mismatch": mismatch,
        "resume": resume,
        "resume_average_ef": resume_average_ef,
        "lost_rank": lost_rank,
        "syncs": syncs,
    }
    if scenario in scenarios:  # these start their own process groups
        rank = int(os.environ["RANK"])
        result = scenarios[scenario](rank, out_dir)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
        return
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {
        "ddp_grads": ddp_grads,
        "average": average,
        "average_error_feedback": average_error_feedback,
    }[scenario](rank, world)
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    end_process_group()


if __name__ == "__main__":
    main()
