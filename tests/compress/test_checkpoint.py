"""Compressed model files: round trip against ``quantise``, test accuracy of the restored
model, and one-line errors for damaged files (library and CLI)."""

import json

import pytest
import torch

from smallfoot.compress import CodecConfig, CompressionError, quantise
from smallfoot.compress.checkpoint import compress_run, decompress, model_accuracy, run_config
from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError
from smallfoot.runner import run_training


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch cnn4 run on digits (batch norm: float and integer buffers)."""
    out = tmp_path_factory.mktemp("runs")
    config = RunConfig(
        dataset="digits",
        model="cnn4",
        model_options={"widths": [8, 8, 16, 16]},
        epochs=1,
        batch_size=64,
        device="cpu",
        out_dir=str(out),
        run_name="run",
        progress=False,
        measure_memory=False,
    )
    summary = run_training(config)
    return out / "run", summary


def test_round_trip_is_quantise_of_every_float_tensor_and_exact_for_the_rest(run, tmp_path):
    run_dir, summary = run
    codec = CodecConfig(c=5, m=4)
    report = compress_run(run_dir, tmp_path / "m.sfq", codec)
    original = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    restored = decompress(tmp_path / "m.sfq")
    assert list(restored) == list(original)
    for name, tensor in original.items():
        want = quantise(tensor, codec, name) if tensor.is_floating_point() else tensor
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], want), name
    values = sum(t.numel() for t in original.values() if t.is_floating_point())
    assert report["values"] == values and report["float32_bytes"] == 4 * values
    assert report["bytes"] == (tmp_path / "m.sfq").stat().st_size
    assert report["file"] == 8 * report["bytes"] / values
    assert report["coded"] <= report["file"] < 32
    # the evaluation is the trainer's: the float32 model scores what the run reported
    config = run_config(tmp_path / "m.sfq")
    assert model_accuracy(config, original) == pytest.approx(summary["test_accuracy"])
    assert abs(model_accuracy(config, restored) - summary["test_accuracy"]) <= 0.05


def test_a_corrupt_or_truncated_file_is_refused_with_one_line(run, tmp_path):
    run_dir, _ = run
    path = tmp_path / "m.sfq"
    compress_run(run_dir, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CompressionError, match=r"m\.sfq is corrupt or truncated \(checksum"):
        decompress(path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(CompressionError, match="corrupt or truncated"):
        decompress(path)
    path.write_bytes(b"SFQ")
    with pytest.raises(CompressionError, match="is not a compressed model"):
        decompress(path)
    with pytest.raises(ConfigError, match="not found"):
        decompress(tmp_path / "none.sfq")
    with pytest.raises(ConfigError, match="is not a run directory"):
        compress_run(tmp_path)


def test_cli_compress_and_decompress(run, tmp_path, run_cli):
    run_dir, summary = run
    sfq, pt = tmp_path / "m.sfq", tmp_path / "m.pt"
    code, out, err = run_cli("compress", str(run_dir), "--out", str(sfq), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert 0 < report["raw"] < 32 and 0 < report["coded"] < 32
    code, out, err = run_cli("decompress", str(sfq), "--out", str(pt), "--json")
    assert code == 0, err
    assert json.loads(out)["restored_test_accuracy"] == report["restored_test_accuracy"]
    restored = torch.load(pt, weights_only=False)
    assert all(torch.equal(restored[k], v) for k, v in decompress(sfq).items())

    sfq.write_bytes(sfq.read_bytes()[:-1])
    code, out, err = run_cli("decompress", str(sfq))
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith(f"error: compressed model {sfq} is corrupt or truncated")
