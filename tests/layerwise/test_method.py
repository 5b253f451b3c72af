import json
import re

import pytest

from smallfoot.cli import parse_extra_flags
from smallfoot.config import RunConfig
from smallfoot.errors import BudgetError, ConfigError, TrainingInterrupted
from smallfoot.methods import get_method
from smallfoot.runner import run_training
from smallfoot.runner.step import method_step_memory
from smallfoot.train import Trainer


def layerwise_config(tmp_path, model="cnn4", **method_options):
    model_options = {"widths": [4, 4, 8, 8]} if model == "cnn4" else {"widths": [8, 8]}
    return RunConfig(
        dataset="synthetic",
        model=model,
        method="layerwise",
        epochs=1,
        batch_size=16,
        out_dir=str(tmp_path),
        run_name="run",
        progress=False,
        measure_memory=False,
        model_options=model_options,
        data_options={"shape": [1, 8, 8], "num_classes": 3, "size": 48},
        method_options={"budget": 0, "decision": "flatten", **method_options},
    )


def test_options_come_from_cli_strings():
    method = get_method(
        "layerwise",
        {
            "unit-size": "2",
            "order": "random-robin",
            "feed": "feednet",
            "backward-dropout": "0.6",
            "epochs-per-unit": "3",
        },
    )
    options = method.options
    assert (options.unit_size, options.order, options.backward_dropout) == (
        2,
        "random-robin",
        0.6,
    )
    assert options.epochs_per_unit == 3
    with pytest.raises(ConfigError, match="order"):
        get_method("layerwise", {"order": "sideways"})
    with pytest.raises(ConfigError, match="bottom-up"):
        get_method("layerwise", {"feed": "checkpoint", "order": "random-robin"})


def test_train_run_writes_units_and_per_unit_metrics(tmp_path):
    summary = run_training(layerwise_config(tmp_path, unit_size=2))
    units = summary["layerwise"]["units"]
    assert [u["units"] for u in units] == [[1, 2], [2, 3], [3, 4]]
    assert 1 <= summary["layerwise"]["peak_unit"] <= 3
    assert summary["test_accuracy"] is not None
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["unit"] for line in lines] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == "layerwise"


@pytest.mark.parametrize("order", ["bottom-up", "random-robin"])
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, order):
    options = {"order": order, "epochs_per_unit": 2, "truncate": True}
    straight = run_training(layerwise_config(tmp_path, "mlp", **options))
    calls = {"n": 0}
    original = Trainer.run_epoch

    def interrupted(self, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    config = layerwise_config(tmp_path, "mlp", **options)
    config.run_name = "resumed"
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_training(config)
    monkeypatch.setattr(Trainer, "run_epoch", original)
    resumed = run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    assert resumed["layerwise"] == straight["layerwise"]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2


def test_defaults_need_no_budget():
    """`--method layerwise` with no flags runs on any model: no budget, no search."""
    options = get_method("layerwise").options
    assert options.budget == 0


def test_unmeetable_budget_fails_before_training_with_advice_that_works(tmp_path):
    config = layerwise_config(tmp_path, budget=0.01, **{"max-convs": 1, "probe-steps": 2})
    with pytest.raises(BudgetError) as error:
        run_training(config)
    message = str(error.value)
    assert "\n" not in message and "budget of 1%" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing was trained
    # every flag the message suggests parses as the CLI parses it, and the budget it names runs
    suggested = re.findall(r"(--[a-z-]+ [0-9a-z.]+)", message)
    assert {flag.split()[0] for flag in suggested} == {"--budget", "--strict-budget"}
    for flag in suggested:
        get_method("layerwise", parse_extra_flags(flag.split()))
    budget = parse_extra_flags(suggested[0].split())
    config = layerwise_config(tmp_path, **budget, **{"max-convs": 1, "probe-steps": 2})
    config.run_name = "advised"
    summary = run_training(config)
    assert all(u["decision"]["within_budget"] for u in summary["layerwise"]["units"][:-1])


@pytest.mark.parametrize(
    "options",
    [
        {"decision": "flatten"},
        {"decision": "pool", "budget": 0.9, "max-convs": 0},
        {"decision": "head", "feed": "checkpoint"},
    ],
)
def test_memory_command_measures_the_largest_unit_as_training_does(tmp_path, options):
    config = layerwise_config(tmp_path, **options)
    config.measure_memory = True
    trained = run_training(config)["memory"]
    shape, classes = tuple(config.data_options["shape"]), config.data_options["num_classes"]
    common = dict(batch=config.batch_size, model_options=config.model_options, classes=classes)
    report = method_step_memory(
        "cnn4", shape, method="layerwise", method_options=config.method_options, **common
    )
    assert report.stage == trained["stage"]
    assert report.peak == trained["peak"]
    baseline = method_step_memory("cnn4", shape, **common)
    assert report.peak < baseline.peak
    estimated = method_step_memory(
        "cnn4", shape, method="layerwise", method_options=config.method_options, fake=True, **common
    )
    assert estimated.estimated and estimated.peak == report.peak


@pytest.mark.slow
def test_memory_command_bounds_the_probed_choice(tmp_path):
    """Without data to probe, `smallfoot memory` reports the largest decision-block candidate:
    at least what the trained run picked, for the same unit."""
    config = layerwise_config(tmp_path, decision="auto", **{"probe-steps": 3})
    config.measure_memory = True
    summary = run_training(config)
    shape, classes = tuple(config.data_options["shape"]), config.data_options["num_classes"]
    report = method_step_memory(
        "cnn4",
        shape,
        batch=config.batch_size,
        model_options=config.model_options,
        classes=classes,
        method="layerwise",
        method_options=config.method_options,
    )
    assert report.peak >= summary["memory"]["peak"]
