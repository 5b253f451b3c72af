from dataclasses import replace

import benchmarks.reversible as bench
from benchmarks.reversible import (
    BASELINE,
    NOISY,
    REVERSIBLE,
    TRAINING,
    matched_width,
    noisy_table,
    reversible_claims,
    target_rows,
)

from smallfoot.bench.grid import GridRow
from smallfoot.config import RunConfig
from smallfoot.models import build_model, parameter_count


def test_matched_width_is_the_closest_parameter_count():
    target = parameter_count(build_model(BASELINE, (1, 16, 16), 10, width=8))
    width = matched_width("hybrid18", (1, 16, 16), 10, target)
    assert width % 4 == 0

    def gap(w):
        return abs(parameter_count(build_model("hybrid18", (1, 16, 16), 10, width=w)) - target)

    assert gap(width) <= gap(width + 4) and (width == 4 or gap(width) <= gap(width - 4))


def test_target_rows_judge_each_target():
    rows = []
    for depth, scale in ((2, 1.0), (8, 1.0)):
        rows.append({"model": BASELINE, "blocks_per_stage": depth, "saved_activations_mib": 100})
        for name in REVERSIBLE:
            saved = (40 if name == "revnet18" else 30) * scale
            rows.append({"model": name, "blocks_per_stage": depth, "saved_activations_mib": saved})
    verdicts = {r["target"]: r["met"] for r in target_rows(rows)}
    assert verdicts["revnet18 saved <= 50% of baseline at depth 2"]
    assert not verdicts["hybrid18 saved <= 20% of baseline at depth 2"]
    assert verdicts["layerwise18 saved activations flat in depth (<= 5%)"]


def run(section, label, seed, accuracy, seconds=10.0, **extra):
    return {"section": section, "label": label, "seed": seed, "test_accuracy": accuracy,
            "seconds": seconds, "epochs": 2, "parameters": 1000, "command": "smallfoot train",
            **extra}  # fmt: skip


def noisy(variant, depth, slope, activations, seed, accuracy, **extra):
    return run(NOISY, f"{variant} {depth} {slope} {activations}", seed, accuracy,
               variant=variant, blocks_per_stage=depth, negative_slope=slope,
               activations=activations, **extra)  # fmt: skip


def test_claims_are_computed_from_the_run_rows():
    rows = []
    for seed in (0, 1, 2):
        rows.append(run(TRAINING, BASELINE, seed, 0.9, seconds=10.0 + seed))
        rows.append(run(TRAINING, "hybrid18", seed, 0.88, seconds=32.0 + seed))
        for depth, loss in ((1, 0.0), (4, 0.05)):
            rows.append(noisy("layerwise", depth, 0.5, "stored", seed, 0.85))
            rows.append(noisy("layerwise", depth, 0.5, "reconstructed", seed, 0.85 - loss))
            rows.append(noisy("hybrid", depth, 0.5, "stored", seed, 0.86))
            rows.append(noisy("hybrid", depth, 0.5, "reconstructed", seed, 0.86 - 0.002 * seed))
    claims = {c.id: c for c in reversible_claims(rows, "smallfoot bench reversible")}
    assert claims["reversible.hybrid_time"].measured == 3.0  # median 33 s against 11 s
    assert not claims["reversible.hybrid_time"].met
    assert claims["reversible.hybrid_noisy_equals_ideal"].measured == 0.2
    assert claims["reversible.hybrid_noisy_equals_ideal"].met
    assert claims["reversible.layerwise_degrades_with_depth"].measured == 5.0
    assert claims["reversible.layerwise_degrades_with_depth"].met


def test_a_diverged_run_counts_at_chance_accuracy():
    rows = [noisy("layerwise", 4, 0.5, "stored", seed, 0.8) for seed in (0, 1, 2)]
    rows += [noisy("layerwise", 4, 0.5, "reconstructed", seed, 0.8) for seed in (0, 1)]
    rows.append(noisy("layerwise", 4, 0.5, "reconstructed", 2, 0.1, diverged=True))
    (row,) = noisy_table(rows)
    assert row["diverged_reconstructed"] == 1 and row["diverged_stored"] == 0
    assert row["accuracy_reconstructed"] == 0.8  # the median of 0.8, 0.8 and chance


def test_a_command_already_run_is_not_trained_again(monkeypatch):
    trained = []

    def fake_run_grid(rows, name, quick):
        (row,) = rows
        trained.append(row.label)
        error = {"error": "the loss became nan"} if row.label == "other" else {}
        return [{"label": row.label, "seed": row.seeds[0], "command": "c", **row.extra,
                 "test_accuracy": 0.8, "seconds": 5.0, **error}]  # fmt: skip

    monkeypatch.setattr(bench, "run_grid", fake_run_grid)
    config = RunConfig(model="resnet18", method="reversible", method_options={"variant": "hybrid"})
    rows = [
        GridRow("hybrid18", config, (0,), extra={"section": TRAINING}),
        GridRow("hybrid18 noisy", config, (0,), extra={"section": NOISY, "variant": "hybrid"}),
        GridRow("other", replace(config, lr=0.01), (0,), extra={"section": TRAINING}),
    ]
    records = bench._run_rows(rows, "reversible", quick=True, classes=10)
    assert trained == ["hybrid18", "other"]
    shared = records[1]
    assert shared["label"] == "hybrid18 noisy" and shared["same_run_as"] == "hybrid18"
    assert shared["section"] == NOISY and shared["test_accuracy"] == 0.8
    assert "diverged" not in records[0]
    assert records[2]["diverged"] and records[2]["test_accuracy"] == 0.1  # chance
    assert records[2]["seconds"] is None
