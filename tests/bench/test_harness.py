"""The benchmark harness: registry, JSON and markdown outputs."""

import json

import pytest

from smallfoot import bench
from smallfoot.bench import BenchResult, get_benchmark, markdown_table, register_benchmark
from smallfoot.errors import UnknownNameError


@pytest.fixture
def toy_benchmark():
    @register_benchmark("toy-test", "a benchmark made for the test")
    def toy(quick, out_dir):
        figure = out_dir / "plot.png"
        figure.write_bytes(b"png")
        rows = [
            {"section": "a", "model": "m1", "bytes": 10, "ratio": 0.12345, "ok": True},
            {"section": "b", "model": "m2", "curve": list(range(20))},
        ]
        return BenchResult(rows=rows, figures=[figure], notes=f"quick={quick}")

    yield toy
    bench._REGISTRY.pop("toy-test")


def test_run_writes_json_and_markdown(tmp_path, toy_benchmark):
    doc = bench.run_benchmark("toy-test", quick=True, results_dir=tmp_path, command="cmd x")
    saved = json.loads((tmp_path / "toy-test-quick.json").read_text())
    assert saved == doc
    assert saved["rows"][0]["bytes"] == 10
    assert saved["command"] == "cmd x" and saved["quick"] is True
    assert saved["machine"]["torch"] and saved["date"]
    assert saved["figures"] == ["toy-test-quick/plot.png"]
    md = (tmp_path / "toy-test-quick.md").read_text()
    assert "## a" in md and "## b" in md and "0.1235" in md and "(20 values, see JSON)" in md
    assert "![plot](toy-test-quick/plot.png)" in md and "quick=True" in md


def test_full_run_does_not_touch_quick_files(tmp_path, toy_benchmark):
    bench.run_benchmark("toy-test", results_dir=tmp_path, command="c")
    assert (tmp_path / "toy-test.json").exists() and not (tmp_path / "toy-test-quick.json").exists()


def test_unknown_benchmark_lists_choices(toy_benchmark):
    with pytest.raises(UnknownNameError, match="toy-test"):
        get_benchmark("nope")


def test_markdown_table_union_of_columns():
    table = markdown_table([{"a": 1}, {"b": None, "a": 2.0}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 |  |", "| 2 |  |"]


def test_benchmarks_come_from_the_checkout(tmp_path, monkeypatch):
    from smallfoot.errors import ConfigError

    assert (bench.benchmarks_dir() / "facto.py").is_file()
    monkeypatch.setenv(bench.BENCHMARKS_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="benchmarks live in the smallfoot checkout"):
        bench.benchmarks_dir()
