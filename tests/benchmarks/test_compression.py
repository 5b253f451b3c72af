"""The compression benchmark's pieces that need no training: Huffman cost, the codec rows on
a saved model, the summary and figure-3.5 rows and the claims computed from run rows."""

import heapq

import pytest
import torch
from benchmarks.compression import (
    MLP,
    SECTION_FIGURE,
    SECTION_RUNS,
    codec_rows,
    epoch_rows,
    huffman_bits,
    summary_rows,
)
from hypothesis import given
from hypothesis import strategies as st

from smallfoot.bench import compute_claims, get_benchmark


def _code_lengths(counts: list[int]) -> list[int]:
    """Huffman code lengths by building the tree (the slow way the test checks against)."""
    heap = [(c, i, [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    lengths = [0] * len(counts)
    while len(heap) > 1:
        a, _, left = heapq.heappop(heap)
        b, tie, right = heapq.heappop(heap)
        for symbol in left + right:
            lengths[symbol] += 1
        heapq.heappush(heap, (a + b, tie, left + right))
    return lengths


@given(st.lists(st.integers(1, 1000), min_size=2, max_size=40))
def test_huffman_bits_is_the_cost_of_a_huffman_code(counts):
    lengths = _code_lengths(counts)
    assert huffman_bits(counts) == sum(c * n for c, n in zip(counts, lengths, strict=True))


def test_codec_rows_on_a_saved_model(tmp_path):
    torch.manual_seed(0)
    state = {"w": torch.randn(64, 32) * 0.1, "b": torch.zeros(32), "n": torch.tensor(3)}
    torch.save({"model": state}, tmp_path / "checkpoint.pt")
    rows = codec_rows("toy", tmp_path)
    by_coder = {r["coder"].split(" (")[0]: r for r in rows}
    coded = by_coder["N bits + range coder"]
    assert coded["encode_MB_s"] > 0 and coded["decode_MB_s"] > 0
    # Huffman's payload loses at most one bit per value against the N-bit fields
    assert (
        by_coder["N bits + Huffman"]["bits_per_value"]
        <= by_coder["quantised to N bits"]["bits_per_value"] + 1
    )
    assert all(r["model"] == "toy" and r["bits_per_value"] > 0 for r in rows)


def _run(model, sync, seed, accuracy, coded=None, section=SECTION_RUNS):
    row = {
        "section": section,
        "model": model,
        "sync": sync,
        "sync_every": 1 if section == SECTION_RUNS else 10,
        "seed": seed,
        "test_accuracy": accuracy,
        "bytes_per_step": 400.0 if sync == "ddp" else 50.0,
        "bits_per_value": 32.0 if sync == "ddp" else 4.0,
        "step_ms": 10.0,
    }
    if coded is not None:
        row["bits_raw_by_epoch"] = [c + 2 for c in coded]
        row["bits_coded_by_epoch"] = coded
    return row


def test_claims_and_tables_are_computed_from_the_run_rows():
    runs = [
        _run(MLP, "ddp", 0, 80.0),
        _run(MLP, "ddp", 1, 82.0),
        _run(MLP, "average", 0, 70.0, coded=[8.0, 8.0]),
        _run(MLP, "average-ef", 0, 81.0, coded=[6.0, 4.0]),
        _run(MLP, "average-ef", 1, 80.6, coded=[5.0, 3.0]),
        _run(MLP, "ddp-entropy", 0, 81.5),
        _run("cnn4", "ddp", 0, 90.0),
        _run("cnn4", "average-ef", 0, 89.0, coded=[7.0, 6.0]),
        _run(MLP, "average", 0, 60.0, coded=[5.0, 4.0], section=SECTION_FIGURE),
        _run(MLP, "average", 1, 60.0, coded=[4.0, 3.0], section=SECTION_FIGURE),
    ]
    claims = {c.id: c for c in compute_claims("compression", runs, "smallfoot bench compression")}
    # the figure-3.5 runs alone: mean over epochs and seeds
    assert claims["compression.bits_per_param"].measured == pytest.approx(4.0)
    assert claims["compression.bits_per_param"].met
    assert claims["compression.bits_per_param"].seeds == 2
    # the thesis' averaging (the MLP alone) and ours with error feedback (cnn4 is the worse)
    assert claims["compression.accuracy"].measured == pytest.approx(-11.0)
    assert claims["compression.accuracy"].seeds == 1
    assert claims["compression.accuracy_ef"].measured == pytest.approx(-1.0)
    assert claims["compression.accuracy_ef"].seeds == 1
    assert claims["compression.hook_accuracy"].measured == pytest.approx(0.5)
    assert claims["compression.hook_accuracy"].met
    summary = {(r["model"], r["sync"]): r for r in summary_rows(runs)}
    assert summary[(MLP, "average-ef")]["accuracy_vs_ddp_points"] == pytest.approx(-0.2)
    assert summary[(MLP, "average-ef")]["traffic_vs_ddp"] == pytest.approx(0.125)
    assert summary[(MLP, "average")]["test_accuracy"] == 70.0  # figure runs kept apart
    epochs = epoch_rows(runs)
    assert [(r["runs"], r["model"], r["sync"], r["epoch"], r["entropy_coded"]) for r in epochs] == [
        (SECTION_RUNS, MLP, "average", 1, 8.0),
        (SECTION_RUNS, MLP, "average", 2, 8.0),
        (SECTION_RUNS, MLP, "average-ef", 1, 5.5),
        (SECTION_RUNS, MLP, "average-ef", 2, 3.5),
        (SECTION_RUNS, "cnn4", "average-ef", 1, 7.0),
        (SECTION_RUNS, "cnn4", "average-ef", 2, 6.0),
        (SECTION_FIGURE, MLP, "average", 1, 4.5),
        (SECTION_FIGURE, MLP, "average", 2, 3.5),
    ]
    assert get_benchmark("compression").name == "compression"
