"""The closedform method, the `smallfoot fit` command and `train --init` from a fit."""

import json
import re
import sys

import pytest
import torch

from smallfoot import cli
from smallfoot.closedform.method import process_peak_bytes, reset_process_peak
from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError
from smallfoot.methods import get_method, get_method_class
from smallfoot.runner import run_training
from smallfoot.runner.step import method_step_memory


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["smallfoot", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_registered_as_a_staged_method():
    cls = get_method_class("closedform")
    assert cls.staged and "Platonic" in cls.description


def test_fit_command_writes_a_run_that_train_init_accepts(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(
        monkeypatch, capsys, "fit", "--dataset", "digits", "--widths", "48,24",
        "--ridge", "10", "--chunk", "500", "--out-dir", str(tmp_path), "--run-name", "fit",
    )  # fmt: skip
    assert code == 0, err
    assert "platonic-pca" in out and "sorted-pca" in out and "process peak memory" in out
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["method"] == "closedform" and summary["epochs"] == 0
    assert summary["test_accuracy"] > 0.85
    assert summary["memory"]["process_peak"] > 0
    assert [layer["width"] for layer in summary["fit"]["layers"]] == [48, 24, 10]

    config = RunConfig(
        dataset="digits", model="mlp", model_options={"widths": [48, 24]}, epochs=1,
        lr=1e-12, init=summary["model_file"], out_dir=str(tmp_path), run_name="tuned",
        progress=False, measure_memory=False,
    )  # fmt: skip
    tuned = run_training(config)
    # a vanishing learning rate leaves the fitted weights: the same predictions
    assert tuned["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1 / 450)


def test_closedform_needs_the_mlp_model(tmp_path):
    config = RunConfig(dataset="digits", model="cnn4", method="closedform", out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--model mlp") as error:
        run_training(config)
    message = str(error.value)
    assert "\n" not in message
    # the widths it suggests parse as the CLI parses --model-opt
    suggested = re.search(r"--model-opt (\S+)\)", message).group(1)
    assert cli.parse_key_values([suggested], "--model-opt") == {"widths": [256, 128]}


def test_memory_command_refuses_in_one_line(monkeypatch, capsys):
    with pytest.raises(ConfigError, match="no training step .* process peak") as error:
        method_step_memory("mlp", (1, 8, 8), 16, method="closedform")
    assert "\n" not in str(error.value)
    code, out, err = run_cli(
        monkeypatch, capsys, "memory", "--model", "cnn4", "--input", "1x28x28", "--method",
        "closedform",
    )  # fmt: skip
    assert code == 2 and "no training step" in err + out and "parameters" not in out


def test_compare_adapts_another_model_to_the_mlp(tmp_path):
    method = get_method("closedform")
    config = RunConfig(
        dataset="digits", model="cnn4", method="closedform", model_options={"widths": [4, 4, 8, 8]},
        train_limit=300, test_limit=100, out_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    adapted, notes = method.adapt(config, (1, 8, 8))
    assert (adapted.model, adapted.model_options) == ("mlp", {"widths": [256, 128]})
    assert len(notes) == 1 and "cnn4" in notes[0] and "mlp" in notes[0]
    assert config.model == "cnn4"  # not mutated
    assert method.adapt(adapted, (1, 8, 8)) == (adapted, [])
    summary = run_training(adapted)
    assert summary["model"] == "mlp" and summary["test_accuracy"] > 0.5


def test_fit_command_reports_bad_options_in_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch, capsys, "fit", "--dataset", "digits", "--widths", "8",
        "--dtype", "float16", "--out-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "float32 or float64" in err


def test_regression_run_reports_mse(tmp_path):
    config = RunConfig(
        dataset="sine", model="mlp", method="closedform", model_options={"widths": [16, 16]},
        method_options={"targets": "random", "activation": "celu", "alpha": 0.1, "beta": 10.0,
                        "solver": "pinv", "dtype": "float64", "tries": 5},
        train_limit=1000, test_limit=500, out_dir=str(tmp_path), progress=False,
    )  # fmt: skip
    summary = run_training(config)
    assert summary["test_accuracy"] is None and summary["test_loss"] < 1e-2


def test_process_peak_is_a_high_water_mark():
    reset_process_peak()
    before, _ = process_peak_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after, source = process_peak_bytes()
    del block
    assert after - before >= 60 * 2**20 and source
