import dataclasses
import json
import math

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, TrainingInterrupted
from smallfoot.methods import get_method
from smallfoot.runner import run_training
from smallfoot.train import Trainer


def facto_config(tmp_path, **overrides):
    values = dict(
        dataset="synthetic",
        model="cnn4",
        method="facto",
        epochs=3,
        batch_size=16,
        out_dir=str(tmp_path),
        progress=False,
        measure_memory=False,
        model_options={"widths": [4, 8, 8, 8], "batch_norm": False},
        data_options={"shape": [1, 8, 8], "num_classes": 3, "size": 48},
        method_options={
            "inr": 0.5,
            "kernel": 2,
            "apply_ratio": 1.0,
            "lr_plan": "switch",
            "frt_epochs": 1,
        },
    )
    values.update(overrides)
    return RunConfig(**values)


def test_options_from_cli_strings_and_validation():
    method = get_method("facto", {"inr": "0.2", "kernel": "3", "apply-ratio": "1.0"})
    assert (method.options.inr, method.options.kernel, method.options.apply_ratio) == (0.2, 3, 1.0)
    with pytest.raises(ConfigError, match="--inr"):
        get_method("facto", {"inr": "1.5"})
    with pytest.raises(ConfigError, match="--kernel"):
        get_method("facto", {"kernel": "0"})


def test_run_records_phases_and_resumes_exactly(tmp_path, monkeypatch, interrupt_at):
    run_training(facto_config(tmp_path, run_name="straight"))
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["facto_phase"] for line in lines] == [
        "full-rank",
        "low-rank",
        "low-rank",
    ]
    original = interrupt_at(2)
    with pytest.raises(TrainingInterrupted):
        run_training(facto_config(tmp_path, run_name="resumed"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    a, b = (
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
        for name in ("straight", "resumed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_too_few_epochs_are_refused_before_any_work_and_adapted_for_compare(tmp_path, monkeypatch):
    def no_work(self, epoch):
        raise AssertionError("an epoch ran")

    config = facto_config(tmp_path, epochs=1, run_name="short")
    original = Trainer.run_epoch
    monkeypatch.setattr(Trainer, "run_epoch", no_work)
    with pytest.raises(ConfigError, match=r"never reaches low-rank training; use --epochs 2$"):
        run_training(config)
    monkeypatch.setattr(Trainer, "run_epoch", original)
    method = get_method("facto", config.method_options)
    adapted, notes = method.adapt(config, (1, 8, 8))
    assert (adapted.epochs, config.epochs) == (2, 1)
    assert notes == ["epochs 1 -> 2: 1 full-rank epochs + 1 low-rank"]
    assert method.adapt(adapted, (1, 8, 8)) == (adapted, [])
    summary = run_training(dataclasses.replace(adapted, run_name="adapted"))
    assert summary["epochs"] == 2
    no_frt = get_method("facto", {"lr_plan": "switch", "frt_epochs": 0})
    assert no_frt.adapt(config, (1, 8, 8)) == (config, [])


def test_paper_plan_is_the_default_full_rank_until_the_first_tenfold_drop(tmp_path):
    options = {"inr": 0.5, "kernel": 2, "apply_ratio": 1.0}  # no plan given: the default
    config = facto_config(tmp_path, epochs=4, lr=0.04, method_options=options, run_name="p")
    summary = run_training(config)
    lines = (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line) for line in lines]
    # drops at 30/60/90% of 4 epochs: ceil(1.2), ceil(2.4) -> before epochs 3 and 4 (1-based),
    # the third (ceil(3.6) = 4 of 4) never; full rank ends at the first
    assert [m["facto_phase"] for m in epochs] == ["full-rank"] * 2 + ["low-rank"] * 2
    assert [m["facto_lr"] for m in epochs] == pytest.approx([0.04, 0.04, 0.004, 4e-4])
    record = summary["facto_schedule"]
    assert record["plan"] == "paper"
    assert [(p["phase"], p["first"], p["last"]) for p in record["phases"]] == [
        ("full-rank", 1, 2),
        ("low-rank", 3, 3),
        ("low-rank", 4, 4),
    ]
    assert record["text"] == (
        "facto (paper plan): full-rank epochs 1-2 at lr 0.04; "
        "low-rank epochs 3-4 at lr 0.004 (3), 0.0004 (4)"
    )


def test_switch_plan_keeps_the_run_schedule(tmp_path):
    summary = run_training(facto_config(tmp_path, epochs=3, lr=0.04, run_name="s"))
    lines = (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["facto_lr"] for line in lines]
    cosine = [0.04 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
    assert rates == pytest.approx(cosine)
    assert summary["facto_schedule"]["text"].startswith("facto (switch plan, cosine schedule): ")


def test_paper_plan_refuses_short_runs_and_frt_epochs(tmp_path):
    method = get_method("facto", {})
    assert method.min_epochs() == 2  # the first drop (30%) of 2 epochs is at epoch 1
    assert get_method("facto", {"drops": "0.6,0.9"}).min_epochs() == 3
    config = facto_config(tmp_path, epochs=2, method_options={"drops": "0.6"})
    with pytest.raises(ConfigError, match=r"first learning-rate drop \(--drops 0.6\).*--epochs 3$"):
        run_training(config)
    with pytest.raises(ConfigError, match="--frt-epochs applies to --lr-plan switch"):
        get_method("facto", {"frt_epochs": "2"})
    with pytest.raises(ConfigError, match="--drops must be fractions"):
        get_method("facto", {"drops": "0.3,1.5"})


@pytest.mark.parametrize(("batch_norm", "compact"), [(False, True), (True, True), (True, False)])
def test_summary_memory_names_the_phases_that_ran_and_what_batch_norm_keeps(
    tmp_path, batch_norm, compact, capsys
):
    config = facto_config(tmp_path, epochs=2, measure_memory=True, progress=True)
    config.model_options = {**config.model_options, "batch_norm": batch_norm}
    config.method_options = {**config.method_options, "compact_bn": compact}
    summary = run_training(config)
    memory = summary["memory"]
    stages = memory["stages"]
    assert memory["stage"] == "low-rank" and set(stages) == {"full-rank", "low-rank"}
    assert memory["saved_activations"] == stages["low-rank"]["saved_activations"]
    assert stages["low-rank"]["saved_activations"] < stages["full-rank"]["saved_activations"]
    assert stages["low-rank"]["optimizer_state"] < stages["full-rank"]["optimizer_state"]
    printed = capsys.readouterr().out
    if not batch_norm:
        assert memory["batchnorm_saved_activations"] == 0 and "facto_note" not in summary
        return
    # the BN inputs: B x C x H x W elements of a batch of 16 8x8 images; compacted BN layers
    # keep one byte per element (+ two (C,) vectors each), the others their float32 input
    widths, sizes = (4, 8, 8, 8), (8 * 8, 4 * 4, 2 * 2, 2 * 2)
    elements = sum(16 * c * hw for c, hw in zip(widths, sizes, strict=True))
    kept = memory["batchnorm_saved_activations"]
    if compact:
        assert elements <= kept <= elements + 4 * 2 * 4 * 8
        assert memory["batchnorm_full_inputs"] == 0
    else:
        assert kept >= 4 * elements and memory["batchnorm_full_inputs"] == kept
    share = kept / memory["saved_activations"]
    assert memory["batchnorm_share"] == pytest.approx(share) and 0 < share < 1
    assert f"batch norm keeps {100 * share:.0f}% of the" in summary["facto_note"]
    assert f"{memory['batchnorm_full_inputs']:,} of them are full inputs" in summary["facto_note"]
    assert summary["facto_note"] in printed


def test_memory_command_measures_the_low_rank_step():
    from smallfoot.runner.step import method_step_memory

    kwargs = dict(model_options={"widths": [4, 8, 8, 8], "batch_norm": False}, classes=3)
    baseline = method_step_memory("cnn4", (1, 16, 16), 8, **kwargs)
    options = {"inr": 0.5, "apply_ratio": 1.0}
    report = method_step_memory(
        "cnn4", (1, 16, 16), 8, method="facto", method_options=options, **kwargs
    )
    assert report.stage == "low-rank"
    assert report.saved_activations < baseline.saved_activations
    assert report.optimizer_state < baseline.optimizer_state


def test_a_run_that_stays_full_rank_reports_full_rank_memory(tmp_path):
    from smallfoot.methods import RunContext
    from smallfoot.runner.run import load_run_data

    # the library path, without run_training's check: one full-rank epoch only
    config = facto_config(tmp_path, epochs=1, measure_memory=True)
    train, test, _ = load_run_data(config)
    method = get_method("facto", config.method_options)
    outcome = method.train(RunContext(config, method.options, train, test))
    assert outcome.memory["stage"] == "full-rank"
    assert set(outcome.memory["stages"]) == {"full-rank"}


def _composed(name, **options):
    config = RunConfig(
        dataset="synthetic", model="resnet18", method=name, batch_size=8, method_options=options,
        data_options={"shape": [1, 16, 16], "num_classes": 3, "size": 8},
    ).validate()  # fmt: skip
    from smallfoot.data import load_dataset
    from smallfoot.methods import RunContext

    data = load_dataset("synthetic", "train", **config.data_options)
    method = get_method(name, options)
    return method, RunContext(config, method.options, data, data), data


def test_facto_inside_reversible_blocks_keeps_the_gradient_of_stored_activations():
    from smallfoot.facto.convert import factorized_layers
    from smallfoot.testing import check_grad_parity

    nets = []
    for activations in ("reconstructed", "stored"):
        method, ctx, data = _composed("facto+reversible", width=8, activations=activations)
        assert method.model_name(ctx) == "revnet18" and method.custom_backward
        torch.manual_seed(0)
        nets.append(method.build_model(ctx).double())
    converted = factorized_layers(nets[0])
    inside = [m for name, m in nets[0].named_modules() if ".blocks." in name]
    assert converted and any(m in converted for m in inside)
    assert not any(m in converted for name, m in nets[0].named_modules() if "down" in name)
    check_grad_parity(nets[0], nets[1], data.x[:4].double(), atol=1e-9)


@pytest.mark.parametrize(
    "composed, parts",
    [
        ("facto+reversible", ("reversible", "facto+reversible:stored")),
        ("facto+checkpoint", ("checkpoint", "facto")),
    ],
)
def test_a_facto_composition_saves_at_most_the_smaller_of_its_parts(composed, parts):
    def report(name):
        name, _, stored = name.partition(":")
        options = {"width": 8} if "reversible" in name else {}
        if stored:
            options["activations"] = "stored"
        method, ctx, _ = _composed(name, **options)
        return method.step_memory(ctx, fake=True)

    both = report(composed)
    assert both.saved_activations <= min(report(part).saved_activations for part in parts)
    assert both.peak < report(parts[0]).peak


def test_facto_refuses_to_compose_with_methods_that_train_their_own_way():
    from smallfoot.methods import get_method_class

    with pytest.raises(ConfigError, match="facto\\+layerwise: layerwise trains with its own loop"):
        get_method_class("facto+layerwise")
    with pytest.raises(ConfigError, match="accumulate\\+facto: facto trains with its own loop"):
        get_method_class("facto+accumulate")
