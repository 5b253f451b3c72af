"""Compressed parameter averaging across 2 processes: identical hashes, exact mean of packages."""

import torch


def test_two_ranks_end_with_bit_identical_averaged_parameters(run_ranks):
    ranks = run_ranks("average")
    assert ranks[0]["hash"] == ranks[1]["hash"]
    assert not torch.equal(ranks[0]["before"]["0.weight"], ranks[1]["before"]["0.weight"])
    for name, quantised in ranks[0]["quantised"].items():
        # the mean, in float64 and rank order, of what each rank's package decodes to
        expected = (quantised.double() + ranks[1]["quantised"][name].double()) / 2
        assert torch.equal(ranks[0]["after"][name], expected.float())
    mean = (ranks[0]["before"]["1.running_mean"] + ranks[1]["before"]["1.running_mean"]) / 2
    torch.testing.assert_close(ranks[0]["after"]["1.running_mean"], mean)
    stats = ranks[0]["stats"]
    assert stats["bits_per_value"] == 8 * stats["bytes_sent"] / stats["values"]
    assert stats["bits_per_value"] < 32
