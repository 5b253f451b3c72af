"""Benchmark grids: each row runs as `smallfoot train` would, with its command recorded."""

import dataclasses
import json
import tomllib

import pytest

from smallfoot.bench.grid import GridRow, median_by, run_grid
from smallfoot.config import RunConfig, config_from_dict


def test_rows_run_through_the_registry_and_record_their_command(tmp_path, run_cli):
    config = RunConfig(
        dataset="digits", model="mlp", method="checkpoint", epochs=1, batch_size=64,
        train_limit=300, test_limit=100, model_options={"widths": [16]}, measure_memory=False,
    )  # fmt: skip
    rows = [GridRow("checkpoint mlp", config, seeds=(0, 1), extra={"width": 16})]
    seen = []
    records = run_grid(rows, "toy", runs_root=tmp_path, on_run=seen.append)
    assert [r["seed"] for r in records] == [0, 1] and seen == records
    for record in records:
        assert record["label"] == "checkpoint mlp" and record["width"] == 16
        assert record["method"] == "checkpoint" and 0 <= record["test_accuracy"] <= 1
        summary = json.loads((tmp_path / "toy" / f"checkpoint-mlp-s{record['seed']}" /
                              "summary.json").read_text())  # fmt: skip
        assert summary["test_accuracy"] == record["test_accuracy"]
        # the recorded command resolves to the configuration that ran
        args = record["command"].split()[1:]
        code, out, err = run_cli(*args, "--print-config")
        assert code == 0, err
        assert config_from_dict(tomllib.loads(out)).seed == record["seed"]
    assert "--method checkpoint" in records[0]["command"]
    assert "--seed 1" in records[1]["command"]


def test_a_rerun_replaces_the_old_run_directory(tmp_path):
    config = RunConfig(dataset="digits", model="mlp", epochs=1, train_limit=100, test_limit=50,
                       model_options={"widths": [8]}, measure_memory=False)  # fmt: skip
    first = run_grid([GridRow("a", config)], "toy", runs_root=tmp_path, quick=True)
    second = run_grid([GridRow("a", config)], "toy", runs_root=tmp_path, quick=True)
    assert first[0]["test_accuracy"] == second[0]["test_accuracy"]
    assert "resumed" not in second[0]
    assert (tmp_path / "toy-quick" / "a-s0" / "summary.json").exists()


def test_median_by_groups_and_skips_missing():
    records = [
        {"m": "a", "x": 1.0},
        {"m": "a", "x": 3.0},
        {"m": "a", "x": None},
        {"m": "b", "x": 2},
    ]
    assert median_by(records, "x", lambda r: r["m"]) == {"a": 2.0, "b": 2}


def test_a_failed_run_is_recorded_and_finished_runs_can_be_reused(tmp_path, monkeypatch):
    from smallfoot.bench import grid as grid_module
    from smallfoot.errors import TrainingError

    config = RunConfig(dataset="digits", model="mlp", epochs=1, train_limit=64, test_limit=32,
                       measure_memory=False, model_options={"widths": [8]})  # fmt: skip
    rows = [GridRow("fine", config), GridRow("nan", dataclasses.replace(config, lr=0.02))]
    real = grid_module.run_training

    def training(run_config):
        if run_config.lr == 0.02:
            raise TrainingError("the loss became nan at epoch 1, step 3")
        return real(run_config)

    monkeypatch.setattr(grid_module, "run_training", training)
    first = run_grid(rows, "g", runs_root=tmp_path)
    assert "test_accuracy" in first[0] and first[1]["error"].startswith("the loss became nan")
    assert first[1]["command"].startswith("smallfoot train") and first[1]["label"] == "nan"
    monkeypatch.setattr(grid_module, "REUSE_FINISHED", True)
    monkeypatch.setattr(grid_module, "run_training", lambda c: pytest.fail(f"retrained {c}"))
    rows[1] = GridRow("nan", config)  # a finished run is reused only for the same command
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        run_grid(rows, "g", runs_root=tmp_path)
    again = run_grid(rows[:1], "g", runs_root=tmp_path)
    assert again[0]["test_accuracy"] == first[0]["test_accuracy"]
