"""DDP across 2 processes: plain gradients equal the single-process gradients of the combined
batch; the entropy hook's are bit-identical across ranks, within quantisation of them, and
carry their quantisation error into the next step."""

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from smallfoot.compress import CodecConfig, quantise
from smallfoot.distributed import EntropyHookState, end_process_group, entropy_hook


@pytest.mark.slow
def test_ddp_and_entropy_hook_gradients(run_ranks):
    ranks = run_ranks("ddp_grads")
    for rank in ranks:
        for got, want in zip(rank["plain"], rank["reference"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    assert ranks[0]["hash"] == ranks[1]["hash"]
    config = CodecConfig(c=6, m=4)
    for rank in ranks:
        first, second = rank["inputs"]
        error_after_first, error_after_second = rank["errors"]
        # error feedback: what quantisation dropped is kept, and added to the next gradient
        torch.testing.assert_close(
            error_after_first, first - quantise(first, config), rtol=0, atol=0
        )
        corrected = second + error_after_first
        torch.testing.assert_close(
            error_after_second, corrected - quantise(corrected, config), rtol=0, atol=0
        )
        # the first step's averaged gradient is within half a bin (N >= c = 6) of the exact one
        half_bin = max(float(r["inputs"][0].max() - r["inputs"][0].min()) for r in ranks) / 2**7
        for got, want in zip(rank["hooked"][0], rank["reference"], strict=True):
            assert (got.double() - want).abs().max() <= half_bin * 1.001
    assert ranks[0]["bits"] < 32


def test_entropy_hook_registers_on_ddp_and_averages_quantised_gradients(tmp_path):
    """One process (world size 1): DDP accepts the hook itself, and the gradient it leaves is
    the quantised gradient of the batch."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        x, y = torch.randn(8, 6), torch.randint(3, (8,))
        nn.functional.cross_entropy(net(x), y).backward()
        plain = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        net.zero_grad()
        ddp = DistributedDataParallel(net)
        state = EntropyHookState(CodecConfig(c=6, m=4))
        ddp.register_comm_hook(state, entropy_hook)
        nn.functional.cross_entropy(ddp(x), y).backward()
        hooked = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        assert state.values_sent == plain.numel() and 0 < state.bytes_sent < 4 * plain.numel()
        half_bin = float(plain.max() - plain.min()) / 2**7
        assert not torch.equal(hooked, plain)
        assert (hooked - plain).abs().max() <= half_bin * 1.001
    finally:
        end_process_group()
