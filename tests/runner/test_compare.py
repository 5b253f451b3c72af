import dataclasses
import json

import pytest

from smallfoot.config import RunConfig
from smallfoot.methods import Method, register_method
from smallfoot.runner.compare import compare_methods, plot_comparison


@register_method
class AlwaysFails(Method):
    name = "test-fails-on-build"
    description = "test only: cannot build its model"

    def build_model(self, ctx):
        from smallfoot.errors import ShapeError

        raise ShapeError("this method needs 32x32 inputs")


@register_method
class RaisesBug(Method):
    name = "test-raises-bug"
    description = "test only: a bug (not a smallfoot error) while building"

    def build_model(self, ctx):
        raise RuntimeError("an internal bug")


@register_method
class NeedsTwoEpochs(Method):
    name = "test-needs-two-epochs"
    description = "test only: adapts the run to two epochs"

    def check_run(self, ctx):
        from smallfoot.errors import ConfigError

        if ctx.config.epochs < 2:
            raise ConfigError("needs --epochs 2")

    def adapt(self, config, input_shape):
        if config.epochs >= 2:
            return config, []
        return dataclasses.replace(config, epochs=2), ["epochs 1 -> 2 (needs two)"]


@register_method
class Interrupted(Method):
    name = "test-interrupted"
    description = "test only: the user presses Ctrl-C"

    def build_model(self, ctx):
        raise KeyboardInterrupt


def tiny_base(**kw) -> RunConfig:
    return RunConfig(
        dataset="digits",
        model="mlp",
        epochs=1,
        progress=False,
        train_limit=256,
        test_limit=128,
        model_options={"widths": [16]},
        **kw,
    )


def test_rows_ratios_and_errors(tmp_path):
    rows = compare_methods(
        tiny_base(), ["test-fails-on-build", "test-raises-bug", "baseline"], tmp_path, warm=False
    )
    assert [r["method"] for r in rows] == ["baseline", "test-fails-on-build", "test-raises-bug"]
    assert rows[0]["seconds_ratio"] == 1.0 and rows[0]["peak_ratio"] == 1.0
    assert rows[0]["peak"] > 0 and 0 <= rows[0]["test_accuracy"] <= 1
    assert rows[0]["model"] == "mlp" and rows[0]["epochs"] == 1 and rows[0]["adapted"] == []
    assert "32x32" in rows[1]["error"]
    assert rows[2]["error"].startswith("RuntimeError: an internal bug")
    assert json.loads((tmp_path / "compare.json").read_text()) == rows
    assert plot_comparison(rows, tmp_path / "plot.png").stat().st_size > 1000


def test_adapted_method_gets_a_row_that_says_so(tmp_path):
    started = []
    rows = compare_methods(
        tiny_base(),
        ["baseline", "test-needs-two-epochs"],
        tmp_path,
        warm=False,
        on_start=lambda i, n, name, config, notes: started.append((i, n, name, config.epochs)),
    )
    assert started == [(0, 2, "baseline", 1), (1, 2, "test-needs-two-epochs", 2)]
    assert rows[1]["epochs"] == 2 and rows[1]["adapted"] == ["epochs 1 -> 2 (needs two)"]
    assert "error" not in rows[1]


def test_interrupt_stops_the_comparison_and_keeps_finished_rows(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        compare_methods(
            tiny_base(), ["baseline", "test-interrupted", "test-fails-on-build"], tmp_path
        )
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["baseline"]


def test_cli_exits_non_zero_when_a_method_failed(tmp_path, monkeypatch, capsys):
    import sys

    from smallfoot import cli

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "smallfoot", "compare", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
            "--train-limit", "256", "--methods", "baseline,test-fails-on-build",
            "--out-dir", str(tmp_path),
        ],
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 1
    assert "1 of 2 methods failed: test-fails-on-build" in out.err
    assert "test-fails-on-build failed: this method needs 32x32 inputs" in out.out
    assert "[2/2] test-fails-on-build" in out.out


def test_a_refused_run_leaves_no_run_directory(tmp_path):
    from smallfoot.errors import ConfigError
    from smallfoot.runner import run_training

    config = tiny_base(method="test-needs-two-epochs", out_dir=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="needs --epochs 2"):
        run_training(config)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_compare_with_a_budget_trains_the_plans_that_fit(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SMALLFOOT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(
        "compare", "--dataset", "digits", "--model", "cnn4", "--epochs", "1",
        "--train-limit", "256", "--test-limit", "128", "--budget", "5MiB",
        "--out-dir", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "runs" / "compare.json").read_text())
    assert rows[0]["plan"] == "baseline (reference, over the budget)"
    assert len(rows) >= 3 and all("error" not in row for row in rows)
    assert all(row["peak"] <= 5 * 2**20 for row in rows[1:]), [r["peak"] for r in rows]
    assert "the plans that fit 5.00 MiB" in out
    assert f"{rows[1]['plan']}: measured peak" in out and "within the budget" in out
    code, _, err = run_cli("compare", "--budget", "5MiB", "--methods", "baseline")
    assert code != 0 and "drop --methods" in err


def test_an_adaptation_note_names_the_configured_variant():
    from smallfoot.runner.compare import method_config

    base = dataclasses.replace(tiny_base(), model="cnn4", method_options={"variant": "irevnet"})
    config, notes = method_config(base, "reversible", (1, 28, 28))
    assert config.method_options == {"variant": "irevnet"}
    assert notes[0].startswith("trains irevnet18 (") and "pad_to=32" in notes[1]
