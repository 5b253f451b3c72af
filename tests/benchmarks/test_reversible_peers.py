"""Benchmark ``reversible-peers`` without MemCNN: a clear error, never a crash or a download."""

import sys

import pytest

from smallfoot.bench import get_benchmark
from smallfoot.errors import ConfigError


def test_without_memcnn_the_benchmark_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "memcnn", None)  # makes `import memcnn` fail
    bench = get_benchmark("reversible-peers")
    with pytest.raises(ConfigError, match=r"pip install memcnn \(beside torch 2\.13\)"):
        bench.fn(True, tmp_path)
