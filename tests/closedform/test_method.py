"""The closedform method, the `smallfoot fit` command and `train --init` from a fit."""

import json
import re

import pytest
import torch

from smallfoot import cli
from smallfoot.closedform.method import process_peak_bytes, reset_process_peak
from smallfoot.config import RunConfig
from smallfoot.data import load_dataset
from smallfoot.errors import ConfigError
from smallfoot.methods import get_method, get_method_class
from smallfoot.models import build_model
from smallfoot.runner import run_training
from smallfoot.runner.step import method_step_memory


def test_registered_as_a_staged_method():
    cls = get_method_class("closedform")
    assert cls.staged and "Platonic" in cls.description


def test_fit_command_writes_a_run_that_train_init_accepts(run_cli, tmp_path):
    code, out, err = run_cli("fit", "--dataset", "digits", "--widths", "48,24", "--targets", "deterministic",
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


LAZY_DIGITS = """
import torch
from smallfoot.data import load_dataset

class Digits(torch.utils.data.Dataset):
    def __init__(self, split):
        self.data = load_dataset("digits", split)
        self.targets = self.data.y.tolist()
    def __len__(self):
        return len(self.targets)
    def __getitem__(self, index):
        return self.data.x[index], self.targets[index]

def digits():
    return Digits("train"), Digits("test")
"""


@pytest.mark.parametrize(
    "options, message",
    [
        ({"solver": "pinv"}, "use --solver ridge with --chunk N"),
        ({"chunk": None}, "use --solver ridge with --chunk N"),
        ({"targets": "deterministic"}, "--targets deterministic starts with Sorted PCA"),
    ],
)
def test_data_read_on_demand_is_fitted_a_chunk_at_a_time_or_refused_first(
    tmp_path, monkeypatch, options, message
):
    (tmp_path / "lazy_digits.py").write_text(LAZY_DIGITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = dict(
        dataset="lazy_digits:digits", data_options={"in_memory": False}, model="mlp",
        model_options={"widths": [64]}, method="closedform", out_dir=str(tmp_path),
        progress=False,
    )  # fmt: skip
    summary = run_training(RunConfig(**base, run_name="chunked", method_options={"chunk": 200}))
    in_memory = run_training(RunConfig(**{**base, "data_options": {}}, run_name="in-memory"))
    assert summary["test_accuracy"] == pytest.approx(in_memory["test_accuracy"], abs=1e-9)
    with pytest.raises(ConfigError, match=message):
        run_training(RunConfig(**base, run_name="refused", method_options=options))
    assert not (tmp_path / "refused").exists()


def test_memory_command_refuses_in_one_line(run_cli):
    with pytest.raises(ConfigError, match="no training step .* process peak") as error:
        method_step_memory("mlp", (1, 8, 8), 16, method="closedform")
    assert "\n" not in str(error.value)
    code, out, err = run_cli("memory", "--model", "cnn4", "--input", "1x28x28", "--method",
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


def test_fit_is_train_with_the_closedform_method(run_cli, tmp_path):
    """`fit` and `train --method closedform --model mlp` take the same flags and defaults and
    fit the same weights."""
    common = ("--dataset", "digits", "--ridge", "10", "--out-dir", str(tmp_path), "--no-memory")
    code, _, err = run_cli("fit", *common, "--widths", "32", "--run-name", "fit")
    assert code == 0, err
    code, _, err = run_cli("train", *common, "--method", "closedform", "--model", "mlp",
                           "--model-opt", "widths=32", "--run-name", "train")  # fmt: skip
    assert code == 0, err
    fitted, trained = (torch.load(tmp_path / name / "model.pt") for name in ("fit", "train"))
    assert fitted.keys() == trained.keys()
    assert all(torch.equal(fitted[key], trained[key]) for key in fitted)


def test_fit_command_reports_bad_options_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("fit", "--dataset", "digits", "--widths", "8",
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


def test_binary_fit_has_one_output_and_saves_the_mlp_layout(tmp_path):
    config = RunConfig(
        dataset="checkerboard", model="mlp", method="closedform",
        model_options={"widths": [64, 64]}, data_options={"size": 400},
        method_options={"targets": "random", "solver": "pinv", "alpha": 0.08, "beta": 200.0},
        out_dir=str(tmp_path), run_name="board", progress=False,
    )  # fmt: skip
    summary = run_training(config)
    assert summary["fit"]["coding"] == "sign" and summary["fit"]["layers"][-1]["width"] == 1
    mlp = build_model("mlp", (2,), 2, widths=[64, 64])
    mlp.load_state_dict(torch.load(summary["model_file"]))
    data = load_dataset("checkerboard", "train", size=400)
    with torch.no_grad():
        accuracy = float((mlp(data.x).argmax(1) == data.y).double().mean())
    assert accuracy == pytest.approx(summary["train_accuracy"], abs=1 / 400)


def test_fit_command_method_and_library_share_their_defaults():
    """The method's options default to the library's; `fit` has no options of its own but
    the widths (its closed-form flags are the method's)."""
    import inspect

    from smallfoot.closedform import fit_mlp

    library = inspect.signature(fit_mlp).parameters
    flags = {
        flag
        for parameter in inspect.signature(cli.fit).parameters.values()
        for flag in getattr(parameter.default, "param_decls", None) or ()
    }
    options = get_method_class("closedform").Options()
    for name in ("targets", "activation", "alpha", "beta", "tries", "solver", "ridge", "ema"):
        assert f"--{name}" not in flags, name
        assert getattr(options, name) == library[name].default, name
    assert options.coding == library["coding"].default


@pytest.mark.slow
def test_a_file_set_four_times_the_memory_cap_is_fitted_a_chunk_at_a_time(file_rows_peak_kib):
    """The closed-form fit of a 128 MiB file-backed set read 256 rows at a time: the process's
    peak memory grows by under 32 MiB over the same fit of a 1,024-row file (getrusage in a
    fresh process)."""
    args = (
        "--method", "closedform", "--model", "mlp", "--model-opt", "widths=64",
        "--chunk", "256", "--no-progress",
    )  # fmt: skip
    growth_mib = (file_rows_peak_kib(args, 16384) - file_rows_peak_kib(args, 1024)) / 1024
    assert growth_mib < 32, f"peak memory grew by {growth_mib:.1f} MiB for a 128 MiB set"
