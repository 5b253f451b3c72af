"""The filtering benchmark's k-NN comparison and claims."""

import json

import pytest
import torch
from benchmarks.filtering import (
    filtering_claims,
    knn_timings,
    online_rows,
    table_rows,
    table_summary,
)

from smallfoot.data import ArrayDataset


def test_every_search_finds_the_same_neighbours():
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=generator)
    x = torch.randn(300, 8, generator=generator) + 1.5 * y[:, None].float()
    rows = knn_timings(ArrayDataset(x, y, 3, "toy"))
    exact = [r for r in rows if "chunks" not in r["search"]]
    assert len(exact) >= 2 and any("scikit-learn" in r["search"] for r in exact)
    for row in exact[1:]:  # scikit-learn and faiss agree with ours
        for key in ("redundancy_k5", "redundancy_k42"):
            assert row[key] == pytest.approx(exact[0][key], abs=1 / 300), row["search"]


def test_claims_take_the_kept_fraction_from_the_chunked_search():
    rows = [
        {"section": "knn", "search": "torch, chunks of 6000", "samples": 60000,
         "redundancy_k42": 0.21, "seconds": 9.0, "threads": 2},
        {"section": "knn", "search": "torch exact, symmetric tiles", "samples": 60000,
         "redundancy_k42": 0.36, "seconds": 30.0, "threads": 2},
        {"section": "knn", "search": "scikit-learn NearestNeighbors brute (exact)",
         "samples": 60000, "seconds": 70.0, "threads": 2},
        {"section": "table 5.1", "dataset": "fashion-mnist", "data": "k=42", "kept_pct": 81.0,
         "accuracy_change_points": -0.2, "accuracy_by_seed_pct": [86.0, 86.5, 86.2]},
    ]  # fmt: skip
    claims = {c.id: c for c in filtering_claims(rows, "smallfoot bench filtering")}
    assert claims["filtering.kept_k42"].measured == 79.0 and claims["filtering.kept_k42"].met
    assert not claims["filtering.accuracy_k42"].met
    assert claims["filtering.accuracy_k42"].seeds == 3
    knn = claims["filtering.knn_seconds"]
    assert knn.met and "scikit-learn" in knn.claim and "70.0 s" in knn.claim


def test_table_rows_are_train_commands_with_the_default_knn_chunks():
    rows = table_rows("digits", None, 2, (0,))
    assert [row.extra["table_row"] for row in rows] == ["full data", "k=5", "k=10", "k=20", "k=42"]
    assert len({row.label for row in rows}) == 5 and all("digits" in row.label for row in rows)
    assert rows[0].config.filter is None and rows[-1].config.filter == "k=42"


def test_table_summary_medians_and_changes(tmp_path):
    def record(label, seed, accuracy, kept=None, online=None):
        run_dir = tmp_path / f"{label}-{seed}"
        run_dir.mkdir()
        epochs = online or [None, None]
        lines = [{"epoch": i, **({"kept_fraction": k} if k else {})} for i, k in enumerate(epochs)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        data = {"filter": {"total": 100, "seconds": 0.5}} if kept else None
        return {"dataset": "digits", "table_row": label, "seed": seed, "test_accuracy": accuracy,
                "train_samples": kept or 100, "seconds": 2.0, "command": f"smallfoot {label}",
                "run_dir": str(run_dir), **({"data": data} if data else {})}  # fmt: skip

    records = [record("full data", 0, 0.90), record("full data", 1, 0.92),
               record("k=42", 0, 0.91, kept=80), record("k=42", 1, 0.89, kept=80),
               record("online", 0, 0.9, online=[1.0, 0.5])]  # fmt: skip
    full, k42, online = table_summary(records)
    assert full["test_accuracy_pct"] == 91.0 and full["kept_pct"] == 100.0
    assert k42["kept_pct"] == 80.0 and k42["knn_seconds"] == 0.5
    assert k42["accuracy_change_points"] == -1.0
    assert online["kept_pct"] == 75.0 and online["knn_seconds"] is None


def test_online_rows_are_train_commands_with_online_filters():
    rows = online_rows("digits", None, 3, (0,))
    assert [row.config.filter for row in rows] == ["k=10,online=true,from=2,cap=0.6",
                                                   "loss=0.25,from=2"]  # fmt: skip
    assert all(row.config.model_options == {"widths": [16, 32, 64, 64]} for row in rows)
