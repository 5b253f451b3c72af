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


def test_error_feedback_carries_what_quantising_lost_to_the_next_sync(run_ranks):
    ranks = run_ranks("average_error_feedback")
    for feedback in (False, True):
        assert ranks[0][feedback]["hash"] == ranks[1][feedback]["hash"]
    plain, fed = ranks[0][False], ranks[0][True]
    # 30 changes of a tenth of a bin each (three bins in all) on identical ranks
    wanted = fed["start"] + fed["change"]
    # with error feedback nothing is lost: the weights plus what is still owed are the target
    torch.testing.assert_close(fed["end"] + fed["errors"]["weight"], wanted, rtol=0, atol=1e-5)
    assert fed["errors"]["weight"].abs().max() <= fed["bin_width"]
    # without it, sub-bin changes are rounded away (and the range contracts by a bin per sync)
    assert (plain["end"] - wanted).abs().max() > 2 * plain["bin_width"]


def test_a_resumed_run_with_error_feedback_continues_exactly(run_ranks):
    first = run_ranks("resume_average_ef")[0]
    # every rank's own momentum and errors were saved (the errors are not all zero)
    ranks = first["ranks"]
    assert len(ranks) == 2
    assert any(e.abs().max() > 0 for rank in ranks for e in rank["errors"].values())
    momentum = [rank["optimizer"]["state"][0]["momentum_buffer"] for rank in ranks]
    assert not torch.equal(*momentum)  # ranks train alone between syncs
    for name, tensor in first["straight"].items():
        assert torch.equal(first["resumed"][name], tensor), name
