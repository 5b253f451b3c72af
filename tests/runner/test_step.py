"""The meter on a named configuration, and the `smallfoot memory` / `smallfoot bench` commands."""

import json

import pytest

from smallfoot.errors import ConfigError
from smallfoot.runner.step import method_step_memory

KEYS = {
    "parameters", "buffers", "gradients", "optimizer_state", "saved_activations",
    "temporaries", "peak", "peak_phase", "per_pixel", "batch", "input_shape", "estimated",
}  # fmt: skip


def test_estimate_agrees_with_measure_through_a_method():
    real = method_step_memory("cnn4", (1, 8, 8), 4, method="checkpoint", optimizer="adamw")
    fake = method_step_memory(
        "cnn4", (1, 8, 8), 4, method="checkpoint", optimizer="adamw", fake=True
    )
    assert fake.estimated and not real.estimated
    assert fake.to_dict() | {"estimated": False} == real.to_dict()


def test_bad_configuration():
    with pytest.raises(ConfigError, match="batch"):
        method_step_memory("cnn4", (1, 8, 8), 0)
    with pytest.raises(ConfigError, match="optimizer"):
        method_step_memory("cnn4", (1, 8, 8), 2, optimizer="lbfgs")


def test_memory_command_json(run_cli, tmp_path):
    plot = tmp_path / "t.png"
    code, out, _ = run_cli("memory", "--model", "mlp", "--input", "1x8x8", "--batch-size", "4",
        "--estimate", "--json", "--plot", str(plot),
    )  # fmt: skip
    assert code == 0, out
    data = json.loads(out)
    assert set(data) >= KEYS and data["estimated"] is True and data["input_shape"] == [1, 8, 8]
    assert all(isinstance(data[k], int) for k in ("parameters", "peak", "saved_activations"))
    assert plot.exists()


def test_memory_command_table_and_errors(run_cli):
    code, out, _ = run_cli("memory", "--model", "mlp", "--input", "6")
    assert code == 0 and "saved activations" in out
    code, out, err = run_cli("memory", "--model", "mlp", "--input", "axb")
    assert code == 2 and "CxHxW" in out + err
    code, out, err = run_cli("memory", "--model", "cnn4", "--method", "checkpoint", "--x", "1")
    assert code == 2 and "--segments" in out + err


def test_bench_command_lists_and_rejects_unknown(run_cli):
    code, out, _ = run_cli("bench")
    assert code == 0 and "meter" in out
    code, out, err = run_cli("bench", "no-such-bench")
    assert code == 2 and "unknown benchmark" in out + err
