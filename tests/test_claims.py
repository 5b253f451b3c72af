"""``smallfoot claims``: every committed claim in one table, re-checked."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smallfoot.bench import Claim
from smallfoot.claims import claims_summary, collect_claims
from smallfoot.cli import app
from smallfoot.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "results"


def write(path: Path, claims: list[dict], benchmark: str = "toy") -> None:
    path.write_text(json.dumps({"benchmark": benchmark, "claims": claims, "rows": []}))


def claim(**changes) -> dict:
    fields = dict(id="toy.one", claim="A claim.", paper="table 1", measured=2.0,
                  comparison=">=", target=1.0, seeds=3, command="smallfoot bench toy")  # fmt: skip
    return Claim(**{**fields, **changes}).to_dict()


def test_collects_every_result_but_quick_ones(tmp_path):
    write(tmp_path / "a.json", [claim(), claim(id="toy.two", measured=0.0)], "a")
    write(tmp_path / "a-quick.json", [claim(id="toy.quick")], "a")
    write(tmp_path / "b.json", [], "b")
    summary = claims_summary(collect_claims(tmp_path))
    assert [c["id"] for c in summary["claims"]] == ["toy.one", "toy.two"]
    assert (summary["met"], summary["not_met"]) == (1, 1)


def test_a_hand_typed_met_is_refused_with_the_fix(tmp_path):
    write(tmp_path / "a.json", [{**claim(), "met": False}])
    with pytest.raises(ConfigError, match="smallfoot bench a --claims-only"):
        collect_claims(tmp_path)


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--results"):
        collect_claims(tmp_path / "nope")


def test_cli_prints_table_and_json(tmp_path):
    write(tmp_path / "a.json", [claim(), claim(id="toy.two", comparison="within",
                                               target=(0.5, 1.5), measured=1.0, unit="%")])  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["claims", "--results", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "toy.one" in result.output and "within 0.5-1.5 %" in result.output
    assert "2 met, 0 not met" in result.output
    result = runner.invoke(app, ["claims", "--results", str(tmp_path), "--json"])
    assert json.loads(result.output)["met"] == 2


def test_the_committed_results_have_claims(tmp_path):
    for path in RESULTS.glob("*.json"):
        shutil.copy(path, tmp_path)
    collected = collect_claims(tmp_path)
    names = {p.stem for p in RESULTS.glob("*.json") if not p.stem.endswith("-quick")}
    assert {item.benchmark for item in collected} == names
