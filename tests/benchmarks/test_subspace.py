"""Benchmark ``subspace``: its grid follows the DLDR authors' protocol through the registry,
its rows read the runs' curves, its claims compare medians over seeds."""

import json
import math

import pytest
from benchmarks.subspace import FULL, QUICK, grid, prefix_check, rows_of, subspace_claims

from smallfoot.config import train_command
from smallfoot.methods import get_method


def test_full_setup_gives_pbfgs_the_authors_steps_per_epoch():
    # run.sh: batch 1024 on CIFAR-10's 50,000 images, 49 steps per epoch
    assert FULL.pbfgs_batch_size == 205 and math.ceil(10_000 / FULL.pbfgs_batch_size) == 49


@pytest.mark.parametrize("setup", [FULL, QUICK])
def test_grid_samples_sgds_prefix_and_gives_the_subspace_half_the_epochs(setup):
    rows = grid(setup)
    assert {r.extra["run"] for r in rows} == {
        "SGD",
        f"P-BFGS d={setup.dim}",
        f"P-SGD d={setup.dim}",
    }
    for r in rows:
        config = r.config
        assert r.seeds == setup.seeds and config.dataset == "fashion-mnist"
        if r.extra["run"] == "SGD":
            assert (config.epochs, config.schedule) == (setup.epochs, "multistep")
            assert config.milestones == [pytest.approx(2 / 3)] and config.gamma == 0.1
            # SGD's drop comes after the sampled epochs: they run at the constant rate
            assert min(config.milestones) * config.epochs >= setup.sample_epochs
            continue
        assert config.epochs == setup.epochs // 2 and config.schedule == "constant"
        method = get_method("subspace", config.method_options)
        options = method.options
        assert options.initial_sample and options.start == "first"
        assert options.sample_count() == setup.samples + 1 and options.dim == setup.dim
        assert config.epochs > options.sample_epochs == setup.sample_epochs
        assert (config.label_noise > 0) == (options.subspace_optimizer == "psgd")
        assert "--milestones" not in train_command(config)
        if options.subspace_optimizer == "pbfgs":
            assert method.subspace_batch_size(config.batch_size) == setup.pbfgs_batch_size
        else:
            assert method.subspace_schedule(config)["milestones"] == [0.75]
            assert "--psgd-drops 0.75" in train_command(config)
            assert "--psgd-weight-decay 0.0" in train_command(config)


def fake_record(tmp_path, name, run, seed, accuracies, section="label noise 0%", model="cnn4"):
    run_dir = tmp_path / f"{name}-{seed}"
    run_dir.mkdir()
    lines = [json.dumps({"epoch": i + 1, "test_accuracy": a}) for i, a in enumerate(accuracies)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "section": section, "model_name": model, "run": run, "seed": seed, "label": name,
        "epochs": len(accuracies), "test_accuracy": accuracies[-1], "train_accuracy": 0.9,
        "seconds": 1.0, "run_dir": str(run_dir), "command": f"smallfoot train {name}",
    }  # fmt: skip


def test_rows_find_when_sgds_final_accuracy_was_reached_and_claims_take_medians(tmp_path):
    records = []
    for seed, (sgd, bfgs) in enumerate([(0.80, 0.81), (0.82, 0.79), (0.81, 0.815)]):
        records.append(fake_record(tmp_path, "sgd", "SGD", seed, [0.5, 0.7, 0.75, sgd]))
        records.append(fake_record(tmp_path, "bfgs", "P-BFGS d=3", seed, [0.5, 0.7, bfgs]))
    for seed, (sgd, psgd) in enumerate([(0.70, 0.72), (0.71, 0.70), (0.69, 0.73)]):
        noisy = {"section": "label noise 20%"}
        records.append(fake_record(tmp_path, "nsgd", "SGD", seed, [0.5, 0.6, 0.65, sgd], **noisy))
        records.append(fake_record(tmp_path, "psgd", "P-SGD d=3", seed, [0.5, 0.6, psgd], **noisy))
    rows = rows_of(records)
    assert [r["epochs_to_sgd_final"] for r in rows[:2]] == [4, 3]
    assert rows[3]["epochs_to_sgd_final"] is None  # 79% never reached seed 1's 82%
    assert rows[1]["curve"] == [50.0, 70.0, 81.0] and rows[1]["command"] == "smallfoot train bfgs"
    assert "6 of 6 subspace runs" in prefix_check(rows, QUICK)
    claims = {c.id: c for c in subspace_claims(rows, "smallfoot bench subspace")}
    # medians: P-BFGS 81.0 vs SGD 81.0; P-SGD 72.0 vs SGD 70.0
    assert claims["subspace.pbfgs_half_epochs"].measured == 0.0
    assert (
        claims["subspace.pbfgs_half_epochs"].met and claims["subspace.pbfgs_half_epochs"].seeds == 3
    )
    assert claims["subspace.psgd_label_noise"].measured == 2.0
    rows[1]["test_acc_pct"] = rows[5]["test_acc_pct"] = 70.0  # two seeds below SGD: median falls
    assert not subspace_claims(rows, "c")[0].met
