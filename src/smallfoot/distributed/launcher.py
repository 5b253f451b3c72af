"""``launch(config, nproc)``: the normal training, data-parallel over ``nproc`` processes.

Processes start through torch.distributed's own launcher (``elastic_launch``, what
``torchrun`` runs). Each rank trains the method's model on its shard of every epoch (a
``DistributedSampler``-like split of one common permutation), either with
DistributedDataParallel (``sync="ddp"``) or by averaging entropy-coded parameters after
every ``every`` steps (``sync="average"``, thesis chapter 3; ``"average-ef"`` adds error
feedback). Rank 0 alone writes the run
directory (config, metrics, checkpoints, summary) and prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from smallfoot._io import atomic_write_json
from smallfoot.compress import CodecConfig
from smallfoot.config import RunConfig, config_to_dict, load_config, save_config
from smallfoot.data import ArrayDataset, BatchLoader, StreamDataset
from smallfoot.data.filtering import FilterSpec
from smallfoot.distributed.averaging import CompressedAveraging
from smallfoot.distributed.groups import end_process_group, quiet_agent
from smallfoot.distributed.hooks import EntropyHookState, entropy_hook
from smallfoot.errors import ConfigError, SmallfootError, TrainingError, TrainingInterrupted
from smallfoot.models import parameter_count
from smallfoot.runner.run import (
    load_run_data,
    new_run_dir,
    resolve_device,
    run_summary,
    seed_everything,
)
from smallfoot.train.trainer import TrainConfig, Trainer, default_augment

SYNCS = ("ddp", "average", "average-ef", "ddp-entropy", "ddp-fp16", "ddp-powersgd")
AVERAGING_SYNCS = ("average", "average-ef")
"""How ranks synchronise: DDP's all-reduce of float32 gradients, the thesis' compressed
parameter averaging, or DDP with a communication hook: ours (entropy-coded gradients with error
feedback), DDP's ``fp16_compress_hook`` or its ``powerSGD_hook`` (rank 1, from step 2)."""
# How long a collective may wait for a slow rank (rank 0 writing a checkpoint, a loaded
# machine); a rank that dies is noticed sooner, by the elastic agent.
_TIMEOUT = datetime.timedelta(seconds=300)


class ShardedLoader(BatchLoader):
    """This rank's batches: one permutation per epoch shared by all ranks (seeded by ``seed``
    and the epoch), padded by repetition to a multiple of ``world`` and dealt out
    ``rank::world``, as ``DistributedSampler`` does; every rank gets the same number of batches.
    Augmentation draws from ``augment_seed`` (per rank)."""

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        augment_seed: int,
        augment=None,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__(
            dataset,
            batch_size,
            shuffle=True,
            seed=seed,
            augment=augment,
            workers=workers,
            pin_memory=pin_memory,
        )
        self.rank, self.world, self.augment_seed = rank, world, augment_seed

    def shard_size(self) -> int:
        """Samples per rank per epoch."""
        return math.ceil(len(self.dataset) / self.world)

    def __len__(self) -> int:
        return math.ceil(self.shard_size() / self.batch_size)

    def plan(self, epoch: int) -> tuple[list[torch.Tensor], torch.Generator]:
        """This rank's index batches of epoch ``epoch`` (0-based) and its augmentation
        generator."""
        order = torch.randperm(
            len(self.dataset),
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
        )
        padded = order.repeat(math.ceil(self.shard_size() * self.world / len(order)))
        shard = padded[: self.shard_size() * self.world][self.rank :: self.world]
        generator = torch.Generator().manual_seed(self.augment_seed * 1_000_003 + epoch)
        batches = [
            shard[start : start + self.batch_size]
            for start in range(0, len(shard), self.batch_size)
        ]
        return batches, generator


def _register_hook(ddp: DistributedDataParallel, sync: str, codec: CodecConfig):
    """Register the communication hook ``sync`` names on ``ddp``; returns the hook's state."""
    if sync == "ddp-entropy":
        state = EntropyHookState(codec)
        ddp.register_comm_hook(state, entropy_hook)
        return state
    if sync == "ddp-fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if sync == "ddp-powersgd":
        state = powerSGD_hook.PowerSGDState(
            None, matrix_approximation_rank=1, start_powerSGD_iter=2
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    return None


class DistributedTrainer(Trainer):
    """A :class:`Trainer` for one rank: sharded batches, DDP forward (``sync`` ``"ddp"`` or
    ``"ddp-<hook>"``), training metrics summed over ranks, and the wall time of its training
    epochs (``step_seconds`` over ``steps``: loading, steps and the callbacks after each step,
    without evaluation). ``self.model`` stays the plain module, so checkpoints
    and evaluation are those of single-process runs."""

    def __init__(
        self,
        *args,
        rank: int,
        world: int,
        sync: str,
        data_seed: int,
        codec: CodecConfig = CodecConfig(),
        **kwargs,
    ):
        self.rank, self.world, self.sync, self.data_seed = rank, world, sync, data_seed
        super().__init__(*args, **kwargs)
        self.hook_state = None
        self.step_seconds, self.steps = 0.0, 0
        if sync.startswith("ddp"):
            self.forward_model = DistributedDataParallel(self.model)
            self.hook_state = _register_hook(self.forward_model, sync, codec)
        else:
            with torch.no_grad():
                for tensor in self.model.state_dict().values():
                    dist.broadcast(tensor, 0)
            self.forward_model = self.model  # ranks train alone; CompressedAveraging syncs

    def make_loader(self) -> ShardedLoader:
        """This rank's shard of every epoch."""
        augment = default_augment(self.train_set.input_shape) if self.config.augment else None
        return ShardedLoader(
            self.train_set,
            self.config.batch_size,
            self.rank,
            self.world,
            seed=self.data_seed,
            augment_seed=self.config.seed,
            augment=augment,
            workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
        )

    def steps_per_epoch(self) -> int:
        """Batches per epoch on every rank."""
        return len(self.loader())

    def bytes_per_step(self, averaging: CompressedAveraging | None) -> float:
        """Bytes this rank handed to the collectives per training step, for the gradients or
        parameters (not the metrics): the float32 gradients for plain DDP, half of that for
        fp16, what PowerSGD's matrices and the uncompressed tensors hold, what the packages of
        the entropy hook or of the parameter averaging took."""
        values = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        state, steps = self.hook_state, max(self.steps, 1)
        if self.sync in AVERAGING_SYNCS:
            return averaging.bytes_sent / steps
        if self.sync == "ddp-entropy":
            return state.bytes_sent / steps
        if self.sync == "ddp-fp16":
            return 2.0 * values
        if self.sync == "ddp-powersgd" and state.total_numel_before_compression:
            ratio = state.total_numel_after_compression / state.total_numel_before_compression
            return 4.0 * values * ratio
        return 4.0 * values

    def forward_backward_step(self, x, y):
        """Loss and gradients of one batch through DDP (gradients averaged over ranks)."""
        output = self.forward_model(x)
        loss = self.loss_fn(output, y)
        loss.backward()
        return loss.detach(), output.detach()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch on this rank's shard; loss and accuracy averaged over all ranks' samples."""
        start = time.perf_counter()
        local = super().train_epoch(epoch)
        # batches, steps and the callbacks after them (parameter averaging), not evaluation
        self.step_seconds += time.perf_counter() - start
        self.steps += self.steps_per_epoch()
        seen = self.loader().shard_size()
        totals = torch.tensor(
            [local["train_loss"] * seen, local["train_accuracy"] * seen, seen],
            dtype=torch.float64,
        )
        dist.all_reduce(totals)
        return {
            "train_loss": float(totals[0] / totals[2]),
            "train_accuracy": float(totals[1] / totals[2]),
        }


def differing_fields(settings: dict[str, Any]) -> dict[int, list[str]]:
    """Per rank, the keys of ``settings`` whose values differ from rank 0's; empty when all agree.

    A collective (``all_gather_object``): every rank of the default group must call it.
    """
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, settings)
    first = everyone[0]
    return {
        rank: sorted(k for k in set(theirs) | set(first) if theirs.get(k) != first.get(k))
        for rank, theirs in enumerate(everyone)
        if theirs != first
    }


def _lost_peer(error: RuntimeError, rank: int, world: int, run_dir: Path) -> Exception:
    """The one-line ``TrainingError`` for a collective that failed because a peer died or hung
    (gloo: connection reset, or the collective timed out); other errors are returned as they are."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, dist.DistError) and "gloo" not in text:
        return error
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". This is typically")[0]
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    hint = ""
    if (run_dir / "checkpoint.pt").exists():
        hint = f"; continue from its last checkpoint with --resume {run_dir} --nproc {world}"
    return TrainingError(
        f"data-parallel run stopped: rank {rank} lost {lost}, which died or hung ({text}){hint}"
    )


def _rank_record(rank: int, threads: int, memory: dict[str, Any] | None) -> dict[str, Any]:
    """What the summary lists per rank: threads, and the meter's peak (bytes) and its phase."""
    record: dict[str, Any] = {"rank": rank, "threads": threads}
    if memory is not None:
        record.update(peak_memory=memory["peak"], peak_phase=memory["peak_phase"])
    return record


def check_launch(config: RunConfig, nproc: int, sync: str) -> None:
    """Refuse, with one ``ConfigError`` line, a data-parallel run that cannot work as configured."""
    from smallfoot.methods import Method, get_method

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if sync not in SYNCS:
        raise ConfigError(f"unknown sync {sync!r}; choose one of: {', '.join(SYNCS)}")
    if config.batch_size % nproc:
        raise ConfigError(
            f"batch size {config.batch_size} does not split over {nproc} processes; set batch_size to a multiple of {nproc}"
        )
    if resolve_device(config.device) != "cpu":
        raise ConfigError(
            f'data-parallel runs use gloo on the CPU for now, not {config.device!r}; set device = "cpu" in the config'
        )
    if config.filter and FilterSpec.parse(config.filter).online:
        raise ConfigError(
            f"--filter {config.filter} filters online, which data-parallel runs do not do yet "
            "(each rank would filter its own shard); run it with --nproc 1"
        )
    method = type(get_method(config.method, config.method_options))
    if method.train is not Method.train or method.make_trainer is not Method.make_trainer:
        raise ConfigError(
            f"method {config.method!r} trains with its own loop and cannot run data-parallel yet; run it with --nproc 1"
        )


def launch(
    config: RunConfig,
    nproc: int,
    sync: str = "ddp",
    codec: CodecConfig = CodecConfig(),
    every: int = 1,
    resume_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``config`` data-parallel on ``nproc`` local processes; return rank 0's summary.

    Args:
        config: the run, as for ``run_training``; ``batch_size`` is the global batch (each rank
            takes ``batch_size // nproc``), so the learning rate keeps its meaning.
        nproc: number of processes (ranks) on this machine.
        sync: ``"ddp"`` (gradients all-reduced by DistributedDataParallel), ``"average"``
            (entropy-coded parameters averaged after every ``every`` steps, thesis chapter 3),
            ``"average-ef"`` (the same with error feedback: each rank adds what quantising its
            last package lost to its next) or ``"ddp-<hook>"`` (DDP with a communication hook).
        codec: quantiser settings for the averaging syncs.
        every: steps between parameter averages.
        resume_dir: continue this run directory from its checkpoint instead (``config`` is then
            read from its ``config.toml``, as ``run_training`` does); every rank loads it.

    Raises:
        ConfigError: a run that cannot be split (see :func:`check_launch`).
        TrainingError: a rank failed (the message names it and its error); the others were
            stopped.
    """
    if resume_dir is not None:
        config = load_config(Path(resume_dir) / "config.toml")
    config.validate()
    check_launch(config, nproc, sync)
    launcher = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    run_dir = resume_dir or (Path(config.out_dir) / config.run_name if config.run_name else None)
    try:
        with quiet_agent():
            results = elastic_launch(launcher, train_rank)(config, sync, codec, every, resume_dir)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        message = failure.message
        if isinstance(message, dict):
            message = message.get("message", message)
        hint = _resume_hint(config, run_dir, nproc, failure.exitcode < 0)
        raise TrainingError(
            f"data-parallel run stopped: rank {rank} failed ({message}); the other ranks were stopped{hint}"
        ) from None
    except SignalException as error:
        # Ctrl-C (or SIGTERM) reached the launcher, which stopped every rank
        hint = _resume_hint(config, run_dir, nproc, True)
        raise TrainingInterrupted(
            f"data-parallel run stopped by {signal.Signals(error.sigval).name}; every rank was "
            f"stopped{hint}"
        ) from None
    return results[0]


def _resume_hint(config: RunConfig, run_dir: Path | None, nproc: int, signalled: bool) -> str:
    """How to continue a stopped run: its ``--resume`` command when its directory and a
    checkpoint are known; after a signal (rank 0 may have checkpointed) the command's shape."""
    if run_dir is not None and (Path(run_dir) / "checkpoint.pt").exists():
        return f"; continue from its last checkpoint with --resume {run_dir} --nproc {nproc}"
    if signalled:
        return (
            f"; continue from its last checkpoint with --resume RUN_DIR --nproc {nproc} "
            f"(RUN_DIR: the run's directory under {config.out_dir})"
        )
    return ""


def train_rank(
    config: RunConfig,
    sync: str,
    codec: CodecConfig,
    every: int,
    resume_dir: str | Path | None = None,
) -> dict[str, Any] | None:
    """One rank's training, run by ``launch`` or by ``torchrun`` (reads RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT from the environment). Returns the summary on rank 0.

    With ``resume_dir`` (which every rank must be able to read) all ranks load its checkpoint
    and rank 0 goes on writing there."""
    from smallfoot.methods import RunContext, get_method

    dist.init_process_group("gloo", timeout=_TIMEOUT)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        # the cores this machine lends us, shared by the ranks on this machine
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.set_num_threads(threads)
        settings = {**config_to_dict(config), "sync": sync, "codec": repr(codec), "every": every}
        differ = differing_fields(settings)
        if differ:
            if rank != 0:
                return None  # rank 0 reports it
            rank_, fields = min(differ.items())
            raise ConfigError(
                f"rank {rank_}'s configuration differs from rank 0's in {', '.join(fields)}; start every rank with the same config"
            )
        method = get_method(config.method, config.method_options)
        seed_everything(config.seed)
        try:
            train_set, test_set, data_record = load_run_data(config)
            if isinstance(train_set, StreamDataset):
                raise ConfigError(
                    f"--dataset {config.dataset} streams its training set (in_memory=false); "
                    "data-parallel runs shard it by index, which a stream has not; run it with "
                    "--nproc 1, or drop in_memory=false"
                )
        except SmallfootError:
            if rank != 0:
                return None  # every rank fails alike; rank 0 reports it
            raise
        # rank 0 makes the run directory; the others learn whether it could, so none hangs
        made: list[Any] = [None if resume_dir is None else Path(resume_dir)]
        if rank == 0 and resume_dir is None:
            try:
                made[0] = new_run_dir(config)
                save_config(config, made[0] / "config.toml")
            except SmallfootError as error:
                made[0] = error
        dist.broadcast_object_list(made, 0)
        if isinstance(made[0], Exception):
            if rank == 0:
                raise made[0]
            return None  # rank 0's error is the one to report
        run_dir = made[0] if rank == 0 else None
        if data_record and rank == 0:
            atomic_write_json(run_dir / "data.json", data_record)
        seed_everything(config.seed)
        ctx = RunContext(
            config, method.options, train_set, test_set, run_dir, "cpu", resume_dir is not None
        )
        method.check_run(ctx)
        model = method.build_model(ctx)
        loss_fn, predict_fn = method.make_loss(ctx)
        callbacks = method.callbacks(ctx, model)
        averaging = None
        if sync in AVERAGING_SYNCS:
            averaging = CompressedAveraging(every, codec, error_feedback=sync == "average-ef")
        if averaging is not None:
            callbacks.append(averaging)
        train_config = TrainConfig.from_run_config(config)
        # per-rank seed for dropout/augmentation; the shard order uses the common config.seed
        train_config.seed = config.seed + 1_000 * rank
        train_config.batch_size = config.batch_size // world
        trainer = DistributedTrainer(
            model,
            train_set,
            test_set,
            train_config,
            loss_fn=loss_fn,
            predict_fn=predict_fn,
            optimizer=method.make_optimizer(ctx, model),
            callbacks=callbacks,
            run_dir=run_dir,
            progress=config.progress and rank == 0,
            rank=rank,
            world=world,
            sync=sync,
            data_seed=config.seed,
            codec=codec,
        )
        # a run stopped before its first checkpoint has nothing to restore: it starts again
        if resume_dir is not None and (Path(resume_dir) / "checkpoint.pt").exists():
            trainer.load_checkpoint(Path(resume_dir) / "checkpoint.pt")
        start = time.perf_counter()
        try:
            metrics = trainer.fit()
        except RuntimeError as error:
            raise _lost_peer(error, rank, world, made[0]) from None
        seconds = time.perf_counter() - start
        memory = None
        if config.measure_memory:
            # the meter's step of this rank's module at its own share of the batch
            own_batch = dataclasses.replace(config, batch_size=train_config.batch_size)
            memory = method.measure_memory(dataclasses.replace(ctx, config=own_batch), trainer)
        ranks: list[Any] = [None] * world
        dist.all_gather_object(ranks, _rank_record(rank, threads, memory))
        if rank != 0:
            return None
        summary = {
            **run_summary(
                config,
                method.model_name(ctx),
                (train_set, test_set),
                metrics,
                len(trainer.history),
                seconds,
                model,
                "cpu",
                run_dir,
                resumed=resume_dir is not None,
                data_record=data_record,
            ),
            **({"memory": memory} if memory is not None else {}),
            "world_size": world,
            "threads_per_rank": threads,
            "ranks": ranks,
            "sync": sync,
            "batch_size_per_rank": train_config.batch_size,
            "communication": {
                "bytes_per_step": trainer.bytes_per_step(averaging),
                "float32_bytes_per_step": 4 * parameter_count(model),
                "step_seconds": trainer.step_seconds / max(trainer.steps, 1),
            },
        }
        if averaging is not None:
            summary["compression"] = {
                "c": codec.c,
                "m": codec.m,
                "fraction": codec.fraction,
                "every": every,
                "last_sync": averaging.last,
            }
        if sync == "ddp-entropy":
            state = trainer.hook_state
            summary["compression"] = {
                "c": codec.c,
                "m": codec.m,
                "fraction": codec.fraction,
                "gradient_bits_per_value": 8 * state.bytes_sent / max(state.values_sent, 1),
            }
        atomic_write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        end_process_group()
