"""Claims: the record's validation, the harness writing them, and each benchmark's claims
computed from its committed rows."""

import json
from pathlib import Path

import pytest

from smallfoot import bench
from smallfoot.bench import (
    BenchResult,
    Claim,
    compute_claims,
    list_benchmarks,
    recompute_claims,
    register_benchmark,
    register_claims,
)

RESULTS = Path(__file__).resolve().parents[2] / "results"


def make(**changes):
    fields = dict(id="area.name", claim="A claim.", paper="table 1: x", measured=0.5,
                  comparison="<=", target=1.0, seeds=1, command="smallfoot bench toy")  # fmt: skip
    return Claim(**{**fields, **changes})


@pytest.mark.parametrize(
    ("comparison", "measured", "target", "met"),
    [("<=", 1.0, 1.0, True), ("<", 1.0, 1.0, False), (">=", 2.0, 1.0, True),
     (">", 0.0, 0.0, False), ("within", 80.7, (76, 84), True), ("within", 90, (76, 84), False)],
)  # fmt: skip
def test_met_is_computed_from_measured_and_target(comparison, measured, target, met):
    assert make(comparison=comparison, measured=measured, target=target).met is met


@pytest.mark.parametrize(
    "changes",
    [{"id": "noarea"}, {"id": "Area.Name"}, {"comparison": "=="}, {"measured": float("nan")},
     {"measured": True}, {"seeds": 0}, {"claim": ""}, {"paper": "two\nlines"},
     {"comparison": "within", "target": 3.0}],
)  # fmt: skip
def test_invalid_claims_are_refused(changes):
    with pytest.raises(ValueError):
        make(**changes)


def test_met_cannot_be_given():
    with pytest.raises(TypeError):
        make(met=True)


def test_from_dict_round_trips_and_refuses_a_typed_met():
    claim = make(comparison="within", measured=80.0, target=(76.0, 84.0), unit="%")
    data = json.loads(json.dumps(claim.to_dict()))
    assert Claim.from_dict(data) == claim
    with pytest.raises(ValueError, match="stored met"):
        Claim.from_dict({**data, "met": False})


@pytest.fixture
def toy_with_claims():
    @register_benchmark("toy-claims", "a benchmark made for the test")
    def toy(quick, out_dir):
        return BenchResult(rows=[{"model": "m", "drop": 0.4}, {"model": "n", "drop": 2.0}])

    @register_claims("toy-claims")
    def toy_claims(rows, command):
        worst = max(r["drop"] for r in rows)
        return [make(id="toy.drop", measured=worst, command=command, unit="points")]

    yield toy
    bench._REGISTRY.pop("toy-claims")
    bench._CLAIMS.pop("toy-claims")


def test_run_writes_claims_and_claims_only_recomputes_them(tmp_path, toy_with_claims):
    doc = bench.run_benchmark("toy-claims", results_dir=tmp_path, command="smallfoot bench x")
    assert doc["claims"][0]["measured"] == 2.0 and doc["claims"][0]["met"] is False
    assert doc["claims"][0]["command"] == "smallfoot bench x"
    md = (tmp_path / "toy-claims.md").read_text()
    assert "## Claims" in md and "| toy.drop |" in md and "0 of 1 claims" in md
    path = tmp_path / "toy-claims.json"
    stored = json.loads(path.read_text())
    stored["rows"][1]["drop"] = 0.9
    stored["claims"] = []
    stored["command"] = "python -c \"run_benchmark('toy-claims')\""
    path.write_text(json.dumps(stored))
    updated = recompute_claims("toy-claims", results_dir=tmp_path)
    assert updated["claims"][0]["measured"] == 0.9 and updated["claims"][0]["met"] is True
    assert updated["claims"][0]["command"] == "smallfoot bench toy-claims"
    assert json.loads(path.read_text()) == updated
    assert "1 of 1 claims" in (tmp_path / "toy-claims.md").read_text()


def test_claims_only_without_results_says_what_to_run(tmp_path, toy_with_claims):
    with pytest.raises(bench.ConfigError, match="smallfoot bench toy-claims"):
        recompute_claims("toy-claims", results_dir=tmp_path)


def test_every_benchmark_has_a_claims_function():
    assert {info.name for info in list_benchmarks()} <= set(bench._CLAIMS)


@pytest.mark.parametrize("path", sorted(p for p in RESULTS.glob("*.json")
                                        if not p.stem.endswith("-quick")), ids=lambda p: p.stem)  # fmt: skip
def test_committed_claims_are_what_the_rows_give(path):
    document = json.loads(path.read_text())
    command = bench.claims_command(document["benchmark"], document["quick"], document["command"])
    claims = compute_claims(document["benchmark"], document["rows"], command)
    assert claims, f"{path.name}: no claim computed"
    assert document["claims"] == [claim.to_dict() for claim in claims]
    assert all(claim.command.startswith("smallfoot bench ") for claim in claims)


def test_a_claim_whose_figures_are_missing_is_left_out():
    facto = json.loads((RESULTS / "facto.json").read_text())
    trained_only = [r for r in facto["rows"] if "top1_pct" in r]
    ids = [c.id for c in compute_claims("facto", trained_only, "smallfoot bench facto")]
    assert ids == ["facto.cut_at_1pt"]
    assert compute_claims("facto", [], "smallfoot bench facto") == []


def test_cli_claims_only_rewrites_the_claims(tmp_path, toy_with_claims):
    from typer.testing import CliRunner

    from smallfoot.cli import app

    bench.run_benchmark("toy-claims", results_dir=tmp_path, command="smallfoot bench toy-claims")
    path = tmp_path / "toy-claims.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "claims": []}))
    args = ["bench", "toy-claims", "--claims-only", "--results", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 claims (0 met)" in result.output
    assert json.loads(path.read_text()) == stored
