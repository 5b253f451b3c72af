import json
import sys

import pytest

from smallfoot import cli


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["smallfoot", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--model", "alexnet", "--dataset", "digits"],
            "unknown model 'alexnet'; choose one of: ",
        ),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--epochs", "0"], "epochs must be a positive integer"),
        (["train", "--optimizer", "adam"], "choose one of: sgd, adamw"),
        (
            ["train", "--dataset", "digits", "--bogus", "3"],
            "method 'baseline' has no option 'bogus'",
        ),
        (["train", "--model-opt", "widths"], "KEY=VALUE"),
        (["train", "--config", "missing.toml"], "not found"),
        (["models", "--input", "3by32"], "CxHxW"),
    ],
)
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, args, message):
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_typer_usage_error_is_exit_2(monkeypatch, capsys):
    code, _, _ = run_cli(monkeypatch, capsys, "train", "--epochs", "three")
    assert code == 2


def test_version(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == "smallfoot 0.1.0"


def test_train_with_config_and_overrides(monkeypatch, capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'dataset = "digits"\nmodel = "mlp"\nepochs = 5\n[model_options]\nwidths = [32]\n'
    )
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--config",
        str(config),
        "--epochs",
        "2",
        "--no-progress",
        "--no-memory",
        "--out-dir",
        str(tmp_path),
        "--run-name",
        "r",
        "--model-opt",
        "widths=16",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["dataset"] == "digits"
    saved = (tmp_path / "r" / "config.toml").read_text()
    assert "epochs = 2" in saved and "widths = 16" in saved
    assert "test accuracy" in out


def test_listing_commands(monkeypatch, capsys):
    for command, expected in (
        ("models", "resnet20"),
        ("datasets", "fashion-mnist"),
        ("methods", "baseline"),
    ):
        code, out, _ = run_cli(monkeypatch, capsys, command)
        assert code == 0 and expected in out
