"""The meter benchmark's pieces on the smallest configurations."""

from benchmarks.meter import estimate_vs_measure, peers, plot_peers


def test_estimate_vs_measure_row():
    (row,) = estimate_vs_measure(["mlp"], (1, 8, 8), 2)
    assert row["max_relative_difference"] == 0 and row["within_2pct"]
    assert row["measured"]["peak"] == row["estimated"]["peak"] > 0
    # the mlp starts with a Flatten view of the batch, which MemTracker charges (MiB, 3 places)
    expected = row["ours_minus_inputs_mib"] + 2 * 8 * 8 * 4 / 2**20
    assert abs(row["memtracker_peak_mib"] - expected) <= 0.002


def test_peers_rows_and_plot(tmp_path):
    rows, figures = peers(["cnn4"], (1, 8, 8), 2, 1, tmp_path)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"baseline", "checkpoint", "offload"}
    assert by_method["baseline"]["saved_vs_baseline"] == 1.0
    assert by_method["checkpoint"]["saved_vs_baseline"] < 1.0
    assert by_method["offload"]["saved_vs_baseline"] == 1.0  # CPU: nothing saved
    assert len(figures) == 2 and all(f.exists() for f in figures)
    assert plot_peers(rows, tmp_path / "p.png").exists()
