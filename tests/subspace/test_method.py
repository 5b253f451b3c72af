"""``--method subspace``: options, the two stages in the run directory, resume, basis reuse, memory."""

import dataclasses
import json

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, TrainingInterrupted
from smallfoot.methods import get_method
from smallfoot.runner import run_training
from smallfoot.subspace import Basis
from smallfoot.train import Trainer


def subspace_config(tmp_path, name="run", measure=False, epochs=3, **method_options):
    return RunConfig(
        dataset="synthetic",
        model="mlp",
        method="subspace",
        epochs=epochs,
        batch_size=16,
        lr=0.1,
        out_dir=str(tmp_path),
        run_name=name,
        progress=False,
        measure_memory=measure,
        model_options={"widths": [16]},
        data_options={"shape": [8], "num_classes": 3, "size": 64},
        method_options={"sample_epochs": 2, "samples": 8, "dim": 3, **method_options},
    )


def test_options_from_cli_strings_and_their_checks():
    options = get_method(
        "subspace",
        {"sample-epochs": "3", "samples": "30", "dim": "15", "subspace-optimizer": "psgd"},
    ).options
    assert (options.sample_epochs, options.samples, options.dim, options.subspace_optimizer) == (
        3,
        30,
        15,
        "psgd",
    )
    with pytest.raises(ConfigError, match="psgd"):
        get_method("subspace", {"subspace-optimizer": "adam"})
    with pytest.raises(ConfigError, match="needs at least 16 --samples"):
        get_method("subspace", {"dim": "15", "samples": "10"})
    with pytest.raises(ConfigError, match="sample-epochs"):
        get_method("subspace", {"sample-epochs": "0"})
    with pytest.raises(ConfigError, match="--subspace-lr must be positive"):
        get_method("subspace", {"subspace-lr": "0"})
    with pytest.raises(ConfigError, match="--pbfgs-batch-size must be positive"):
        get_method("subspace", {"pbfgs-batch-size": "0"})
    with pytest.raises(ConfigError, match=r"--psgd-drops must be fractions .* got \[1.5\]"):
        get_method("subspace", {"psgd-drops": "1.5", "subspace-optimizer": "psgd"})
    with pytest.raises(ConfigError, match="--subspace-optimizer is pbfgs"):
        get_method("subspace", {"psgd-drops": "0.75"})


def test_psgd_drops_step_the_subspace_stage_only(tmp_path):
    # the authors' train_psgd.py: x0.1 at 30 of 40 epochs; the sampling stage keeps its own
    # (constant) schedule
    config = dataclasses.replace(
        subspace_config(tmp_path, epochs=6, subspace_optimizer="psgd", psgd_drops=[0.5]),
        schedule="constant",
        gamma=0.1,
    )
    run_training(config)
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    lrs = [(m["stage"], m["lr"]) for m in lines]
    assert lrs[:2] == [("sampling", 0.1), ("sampling", 0.1)]
    assert [stage for stage, _ in lrs[2:]] == ["subspace"] * 4
    assert [lr for _, lr in lrs[2:]] == pytest.approx([0.1, 0.01, 0.01, 0.01])
    method = get_method("subspace", {"subspace_optimizer": "psgd"})
    assert method.subspace_schedule(config) == {"schedule": "constant", "milestones": [0.5, 0.75]}


def test_psgd_weight_decay_is_the_runs_unless_set():
    from smallfoot.subspace.method import random_basis
    from smallfoot.train import TrainConfig

    model = torch.nn.Linear(4, 3)
    basis, config = random_basis(model, 5), TrainConfig(weight_decay=1e-4)
    for options, decay in (({}, 1e-4), ({"psgd-weight-decay": "0"}, 0.0)):
        method = get_method("subspace", {"subspace-optimizer": "psgd", **options})
        group = method.subspace_optimizer(model, basis, config).param_groups[0]
        assert group["weight_decay"] == decay
    with pytest.raises(ConfigError, match="--psgd-weight-decay must be >= 0"):
        get_method("subspace", {"psgd-weight-decay": "-1", "subspace-optimizer": "psgd"})
    with pytest.raises(ConfigError, match="--psgd-weight-decay sets P-SGD's .* is pbfgs"):
        get_method("subspace", {"psgd-weight-decay": "0"})


@pytest.mark.parametrize("optimizer", ["psgd", "pbfgs"])
def test_run_samples_then_trains_in_the_subspace(tmp_path, optimizer):
    summary = run_training(subspace_config(tmp_path, subspace_optimizer=optimizer, measure=True))
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["stage"]) for m in lines] == [
        (1, "sampling"),
        (2, "sampling"),
        (3, "subspace"),
    ]
    basis = Basis.load(run / "basis.pt")
    assert basis.dim == 3 and len(basis.explained_variance_ratio) == 8
    info = summary["subspace"]
    assert info["optimizer"] == optimizer and info["dim"] == 3
    assert 0 < info["explained_variance"] <= 1
    # the weights moved only inside span(P) during stage 2
    start = torch.load(run / "sampling" / "checkpoint.pt", weights_only=False)["model"]
    end = torch.load(run / "subspace" / "checkpoint.pt", weights_only=False)["model"]
    delta = torch.cat([(end[k] - start[k]).reshape(-1) for k, _ in basis.layout])
    assert delta.norm() > 0
    assert (delta - basis.P @ (basis.P.T @ delta)).norm() < 1e-4 * delta.norm()
    memory = summary["memory"]
    assert memory["stage"] in ("sampling", "subspace")
    n = sum(p.numel() for p in start.values())
    assert memory["basis_bytes"] == 4 * (n * 3 + n)
    # SGD keeps n momentum values; the subspace optimizer keeps P (n x d) and d-sized state
    assert memory["stage_optimizer_state"]["sampling"] == 4 * n
    assert memory["stage_optimizer_state"]["subspace"] >= 4 * n * 3
    if optimizer == "pbfgs":
        assert info["pbfgs_steps"] == 1  # one batch of up to 1024 per epoch


def test_disk_storage_and_resume_of_the_subspace_stage(tmp_path):
    config = subspace_config(tmp_path, epochs=4, storage="disk", subspace_optimizer="psgd")
    config.schedule = "constant"  # so a 3-epoch run is the 4-epoch run stopped after epoch 3
    run_training(config)
    assert (tmp_path / "run" / "trajectory.f32").exists()
    config.epochs, config.run_name = 3, "cut"
    run_training(config)
    cut = tmp_path / "cut"
    text = (cut / "config.toml").read_text().replace("epochs = 3", "epochs = 4")
    (cut / "config.toml").write_text(text)
    run_training(RunConfig(), resume_dir=cut)
    full = torch.load(tmp_path / "run" / "subspace" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(cut / "subspace" / "checkpoint.pt", weights_only=False)
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    lines = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in lines] == ["sampling", "sampling", "subspace", "subspace"]


def test_a_saved_basis_is_reused_and_checked(tmp_path):
    run_training(subspace_config(tmp_path))
    basis_file = str(tmp_path / "run" / "basis.pt")
    summary = run_training(
        subspace_config(tmp_path, name="reuse", epochs=1, basis=basis_file, dim=2)
    )
    assert summary["subspace"]["dim"] == 2 and summary["subspace"]["sample_epochs"] == 0
    other = subspace_config(tmp_path, name="other", epochs=1, basis=basis_file)
    other.model_options = {"widths": [8]}
    with pytest.raises(ConfigError, match="different model"):
        run_training(other)


def test_authors_sampling_starts_the_subspace_from_the_initial_weights(
    tmp_path, monkeypatch, interrupt_at
):
    options = dict(initial_sample=True, start="first", samples=2, dim=2, subspace_optimizer="psgd")
    starts, fit = [], Trainer.fit

    def recording_fit(self):
        if self.run_dir.name == "subspace":
            starts.append(torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]))
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    run_training(subspace_config(tmp_path, name="straight", epochs=4, **options))
    run = tmp_path / "straight"
    basis = Basis.load(run / "basis.pt")
    assert len(basis.explained_variance_ratio) == 3  # the initial weights + one per epoch
    sampling = torch.load(run / "sampling" / "checkpoint.pt", weights_only=False)
    samples = sampling["callbacks"][0]["store"]["samples"]
    first = torch.load(run / "first_sample.pt", weights_only=True)
    assert torch.equal(first, samples[0]) and torch.equal(starts[0], first)
    last = torch.cat([sampling["model"][k].reshape(-1) for k, _ in basis.layout])
    assert not torch.equal(first, last)
    end = torch.load(run / "subspace" / "checkpoint.pt", weights_only=False)["model"]
    # interrupted before the first subspace epoch finished: the resumed run starts there too
    original = interrupt_at(0, stage="subspace")
    with pytest.raises(TrainingInterrupted):
        run_training(subspace_config(tmp_path, name="cut", epochs=4, **options))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    run_training(RunConfig(), resume_dir=tmp_path / "cut")
    assert torch.equal(starts[-1], first)
    resumed = torch.load(tmp_path / "cut" / "subspace" / "checkpoint.pt", weights_only=False)
    for key, value in end.items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="needs at least 4 --samples .got 2, plus the initial"):
        get_method("subspace", {"dim": "4", "samples": "2", "initial-sample": "true"})
    with pytest.raises(ConfigError, match="drop --start first"):
        get_method("subspace", {"start": "first", "basis": "b.pt"})


def test_pbfgs_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, interrupt_at):
    run_training(subspace_config(tmp_path, name="straight", epochs=4))
    original = interrupt_at(1, stage="subspace")
    with pytest.raises(TrainingInterrupted) as info:
        run_training(subspace_config(tmp_path, name="cut", epochs=4))
    cut = tmp_path / "cut"
    # the message numbers the epoch as the user sees it and names the directory --resume takes
    assert "epoch 4 of 4" in str(info.value)
    assert f"--resume {cut}`" in str(info.value)
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(RunConfig(), resume_dir=cut)
    assert summary["subspace"]["pbfgs_steps"] == 2
    full = torch.load(tmp_path / "straight" / "subspace" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(cut / "subspace" / "checkpoint.pt", weights_only=False)
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    state = resumed["optimizer"]["state"][0]
    assert state["inverse_hessian"].dtype == torch.float64
    torch.testing.assert_close(
        state["inverse_hessian"], full["optimizer"]["state"][0]["inverse_hessian"], rtol=0, atol=0
    )


def test_too_few_epochs_are_refused_before_any_work_and_adapted_for_compare(tmp_path, monkeypatch):
    def no_work(self, epoch):
        raise AssertionError("an epoch ran")

    config = subspace_config(tmp_path, name="short", epochs=2)
    original = Trainer.run_epoch
    monkeypatch.setattr(Trainer, "run_epoch", no_work)
    with pytest.raises(ConfigError, match=r"at least 3 epochs .*; use --epochs 3$"):
        run_training(config)
    monkeypatch.setattr(Trainer, "run_epoch", original)
    method = get_method("subspace", config.method_options)
    adapted, notes = method.adapt(config, (8,))
    assert adapted.epochs == 3 and config.epochs == 2
    assert notes == ["epochs 2 -> 3: 2 sampling epochs + 1 in the subspace"]
    assert method.adapt(adapted, (8,)) == (adapted, [])
    summary = run_training(dataclasses.replace(adapted, run_name="adapted"))
    assert summary["epochs"] == 3 and summary["test_accuracy"] is not None
    # a reused basis needs no sampling: one epoch is enough
    reuse = get_method("subspace", {"basis": str(tmp_path / "adapted" / "basis.pt")})
    assert reuse.adapt(dataclasses.replace(config, epochs=1), (8,))[1] == []


def test_interrupt_during_sampling_names_the_run_and_resumes(tmp_path, monkeypatch, interrupt_at):
    original = interrupt_at(1, stage="sampling")
    with pytest.raises(TrainingInterrupted) as info:
        run_training(subspace_config(tmp_path, name="cut"))
    cut = tmp_path / "cut"
    assert str(info.value) == (
        f"interrupted during epoch 2 of 3; epoch 1 is kept in {cut}; "
        f"continue with `smallfoot train --resume {cut}`"
    )
    monkeypatch.setattr(Trainer, "run_epoch", original)
    summary = run_training(RunConfig(), resume_dir=cut)
    assert summary["resumed"] and summary["epochs"] == 3
    lines = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(m["epoch"], m["stage"]) for m in lines] == [
        (1, "sampling"),
        (2, "sampling"),
        (3, "subspace"),
    ]


@pytest.mark.parametrize("optimizer", ["psgd", "pbfgs"])
def test_memory_measures_the_larger_stage_not_the_baseline(optimizer):
    from smallfoot.runner.step import method_step_memory

    options = {"subspace_optimizer": optimizer, "dim": 5, "samples": 8}
    kwargs = dict(model_options={"widths": [32]}, batch=16, classes=3)
    baseline = method_step_memory("mlp", (8,), **kwargs)
    report = method_step_memory("mlp", (8,), method="subspace", method_options=options, **kwargs)
    n = baseline.parameters // 4
    assert report.stage == "subspace" and baseline.stage is None
    # the subspace optimizer keeps P (n x d); SGD's momentum is n floats
    assert baseline.optimizer_state == 4 * n
    assert report.optimizer_state >= 4 * n * 5
    assert report.peak > baseline.peak
    if optimizer == "psgd":
        estimated = method_step_memory(
            "mlp", (8,), method="subspace", method_options=options, fake=True, **kwargs
        )
        assert (estimated.stage, estimated.peak) == ("subspace", report.peak)
    else:
        with pytest.raises(ConfigError, match="drop --estimate"):
            method_step_memory(
                "mlp", (8,), method="subspace", method_options=options, fake=True, **kwargs
            )


def test_memory_names_the_sampling_stage_when_it_is_larger():
    from smallfoot.runner.step import method_step_memory

    # AdamW keeps 2n floats while sampling; P-SGD in one dimension keeps P (n) and 1 float
    kwargs = dict(model_options={"widths": [32]}, batch=16, classes=3, optimizer="adamw")
    options = {"subspace_optimizer": "psgd", "dim": 1, "samples": 4}
    report = method_step_memory("mlp", (8,), method="subspace", method_options=options, **kwargs)
    baseline = method_step_memory("mlp", (8,), **kwargs)
    assert report.stage == "sampling"
    assert (report.peak, report.optimizer_state) == (baseline.peak, baseline.optimizer_state)


def test_pbfgs_defaults_follow_the_authors_protocol():
    from smallfoot.subspace.method import random_basis
    from smallfoot.train import TrainConfig

    method = get_method("subspace")
    options = method.options
    assert (options.pbfgs_batch_size, options.line_search, options.curvature) == (
        1024,
        "backtrack",
        "same-batch",
    )
    assert method.subspace_batch_size(64) == 1024
    model = torch.nn.Linear(4, 3)
    group = method.subspace_optimizer(model, random_basis(model, 5), TrainConfig()).param_groups[0]
    assert (group["lr"], group["c1"], group["shrink"], group["max_evals"]) == (1.0, 0.4, 0.4, 20)
    assert (group["line_search"], group["curvature"]) == ("backtrack", "same-batch")
    psgd = get_method("subspace", {"subspace_optimizer": "psgd"})
    assert psgd.subspace_batch_size(64) == 64
    old = get_method("subspace", {"pbfgs_batch_size": "none", "line_search": "interpolate"})
    assert old.subspace_batch_size(64) == 64
