"""The partitionwise benchmark's claims are computed from its rows."""

from benchmarks.partitionwise import partitionwise_claims


def _row(label: str, seed: int, **figures) -> dict:
    return {"label": label, "seed": seed, **figures}


def test_claims_compare_the_medians_of_the_rows():
    rows = []
    for seed in (0, 1, 2):
        rows += [
            _row("single", seed, test_accuracy_pct=90.0 + seed, images_per_second=100.0),
            _row(
                "partitionwise",
                seed,
                test_accuracy_pct=89.8 + seed,
                images_per_second=120.0 + seed,
                peak_per_process=50.0,
                train_seconds=10.0,
            ),
            _row("partitionwise+loss-filter", seed, train_seconds=8.0 + seed),
            _row("ddp", seed, images_per_second=100.0, peak_per_process=100.0),
        ]
    claims = {c.id: c for c in partitionwise_claims(rows, "smallfoot bench partitionwise")}
    assert abs(claims["partitionwise.accuracy"].measured + 0.2) < 1e-9
    assert claims["partitionwise.accuracy"].met and claims["partitionwise.accuracy"].seeds == 3
    assert claims["partitionwise.throughput_vs_ddp"].measured == 1.21
    assert claims["partitionwise.memory"].measured == 0.5 and claims["partitionwise.memory"].met
    assert claims["partitionwise.filtering_time"].measured == 0.9
    assert all(c.command == "smallfoot bench partitionwise" for c in claims.values())


def test_claims_whose_rows_are_missing_are_left_out():
    rows = [_row("single", 0, test_accuracy_pct=90.0)]
    assert partitionwise_claims(rows, "smallfoot bench partitionwise --quick") == []
