"""Compressed parameter averaging across ranks (thesis chapter 3's setting).

Every rank encodes its parameters with :mod:`smallfoot.compress`, the packages are exchanged
with two ``all_gather`` calls (byte lengths, then uint8 buffers padded to the longest), and
every rank decodes all of them and averages in rank order, in float64: every rank computes the
same sums from the same bytes, so all ranks end with bit-identical parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from smallfoot.compress import CodecConfig, bits_per_parameter, decode_state, encode_state
from smallfoot.errors import ConfigError
from smallfoot.train.trainer import Callback


def all_gather_bytes(data: bytes, group: dist.ProcessGroup | None = None) -> list[bytes]:
    """Every rank's ``data``, in rank order (of ``group``), on every rank.

    Two collectives: an int64 length per rank, then uint8 tensors padded to the longest.
    Works on gloo (CPU tensors); on NCCL the tensors would have to live on the GPU.
    """
    world = dist.get_world_size(group)
    length = torch.tensor([len(data)], dtype=torch.int64)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length, group=group)
    size = max(int(n) for n in lengths)
    padded = torch.zeros(size, dtype=torch.uint8)
    if data:
        padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    gathered = [torch.empty(size, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return [g[: int(n)].numpy().tobytes() for g, n in zip(gathered, lengths, strict=True)]


@torch.no_grad()
def average_parameters(
    model: nn.Module,
    config: CodecConfig = CodecConfig(),
    group: dist.ProcessGroup | None = None,
    errors: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Replace ``model``'s parameters by the mean over ranks of their quantised values.

    With ``errors`` (a dict this rank keeps from one sync to the next; start it empty), each
    parameter is sent as ``param + error`` and ``error`` becomes what quantising that lost
    (error feedback, as PowerSGD and our gradient hook do): a change smaller than half a
    quantisation bin is carried to the next sync instead of being rounded away at every one.
    Floating-point buffers (batch-norm statistics) are averaged exactly (float64, rank order);
    integer buffers are left alone. Returns ``bytes_sent`` (this rank's package buffer),
    ``values``, ``bits_per_value`` (8 * bytes_sent / values) and ``raw_bits_per_value`` (the
    layers' N weighted by their values, before entropy coding).

    Raises:
        CompressionError: a parameter holds NaN/inf, or a rank's buffer arrived damaged (the
            message names the layer and the rank).
    """
    params = dict(model.named_parameters())
    names = list(params)
    sent = {n: p.detach() for n, p in params.items()}
    if errors is not None:
        sent = {n: t + errors[n] if n in errors else t for n, t in sent.items()}
    mine = encode_state(sent, config)
    received = [
        decode_state(buffer, names, rank=rank)
        for rank, buffer in enumerate(all_gather_bytes(mine, group))
    ]
    if errors is not None:
        own = received[dist.get_rank(group)]
        errors.update({n: t - own[n].to(t.dtype) for n, t in sent.items()})
    for name, param in params.items():
        total = sum(state[name].to(torch.float64) for state in received)
        param.copy_(total / len(received))
    _average_float_buffers(model, group)
    values = sum(p.numel() for p in params.values())
    return {
        "bytes_sent": len(mine),
        "values": values,
        "bits_per_value": 8 * len(mine) / max(values, 1),
        "raw_bits_per_value": bits_per_parameter(mine)["raw"] if values else 0.0,
    }


def _average_float_buffers(model: nn.Module, group: dist.ProcessGroup | None) -> None:
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).to("cpu", torch.float64) for b in buffers])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, flat, group=group)
    mean = sum(gathered) / len(gathered)
    offset = 0
    for buffer in buffers:
        buffer.copy_(mean[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()


class CompressedAveraging(Callback):
    """Trainer callback: ``average_parameters`` after every ``every``-th optimizer step, with
    error feedback when ``error_feedback`` (our option; the thesis has none).

    Each rank trains its own copy on its shard; this is the thesis' synchronisation. The
    figures of the last sync are kept in ``last`` (bytes sent, bits per value), the bytes of
    all syncs since it was made in ``bytes_sent``; every epoch's metrics get the mean over its
    syncs of bits per value before (``sync_bits_raw``, the N's) and after entropy coding
    (``sync_bits_coded``, every byte sent), the thesis' figure 3.5. Ranks train alone between
    syncs, so each has its own optimizer state (momentum) and errors: they are gathered at each
    epoch's end and saved in rank 0's checkpoint, and a resumed run gives every rank its own
    back, so it continues exactly.
    """

    def __init__(
        self,
        every: int = 1,
        config: CodecConfig = CodecConfig(),
        group: dist.ProcessGroup | None = None,
        error_feedback: bool = False,
    ):
        self.every, self.config, self.group = every, config, group
        self.errors: dict[str, torch.Tensor] | None = {} if error_feedback else None
        self.last: dict[str, Any] = {}
        self.bytes_sent = 0
        self._epoch: list[tuple[float, float]] = []
        self._ranks: list[dict[str, Any]] = []

    def on_batch_end(self, trainer, batch_index, loss, output) -> None:
        """Average after every ``every``-th step (counted by the trainer's global step)."""
        if trainer.global_step % self.every == 0:
            self.last = average_parameters(trainer.model, self.config, self.group, self.errors)
            self.bytes_sent += self.last["bytes_sent"]
            self._epoch.append((self.last["raw_bits_per_value"], self.last["bits_per_value"]))

    def on_epoch_end(self, trainer, epoch, metrics) -> None:
        """Add the epoch's mean bits per value (raw and coded) to its metrics line."""
        if self._epoch:
            metrics["sync_bits_raw"] = sum(r for r, _ in self._epoch) / len(self._epoch)
            metrics["sync_bits_coded"] = sum(c for _, c in self._epoch) / len(self._epoch)
        self._epoch = []
        # each rank's own state (its momentum, its errors) for rank 0's checkpoint
        mine = {"optimizer": trainer.optimizer.state_dict(), "errors": self.errors}
        self._ranks = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(self._ranks, mine, group=self.group)

    def state_dict(self) -> dict[str, Any]:
        """Every rank's optimizer state and errors as of the last epoch's end."""
        return {"ranks": self._ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's per-rank states (saved with as many ranks) for
        :meth:`on_train_start`, where this rank takes its own back."""
        saved, world = state.get("ranks") or [], dist.get_world_size(self.group)
        if saved and len(saved) != world:
            raise ConfigError(
                f"the checkpoint holds the states of {len(saved)} ranks; resume it with "
                f"--nproc {len(saved)}, not {world}"
            )
        self._ranks = saved

    def on_train_start(self, trainer) -> None:
        """After a resume: this rank's own optimizer state and errors, not rank 0's."""
        if not self._ranks:
            return
        mine = self._ranks[dist.get_rank(self.group)]
        trainer.optimizer.load_state_dict(mine["optimizer"])
        if self.errors is not None:
            self.errors.clear()
            self.errors.update(mine["errors"] or {})
