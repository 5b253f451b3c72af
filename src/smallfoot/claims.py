"""Every claim of every committed benchmark result, in one list.

Each ``results/NAME.json`` written by ``smallfoot bench NAME`` holds a ``claims`` list computed
from its rows (see :class:`smallfoot.bench.Claim`). :func:`collect_claims` reads them all
(quick runs, ``NAME-quick.json``, are skipped) and checks each: a stored ``met`` that its
measured figure and target do not give is an error, so nothing in the table is typed by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from smallfoot.bench import Claim
from smallfoot.errors import ConfigError


@dataclass(frozen=True)
class CollectedClaim:
    """A claim and the benchmark result it came from."""

    benchmark: str
    claim: Claim


def collect_claims(results_dir: str | os.PathLike = "results") -> list[CollectedClaim]:
    """The claims of every ``results_dir/*.json`` except ``*-quick.json``, in file order (sorted
    by name), each re-checked; a result without a ``claims`` list contributes none. Raises
    ``ConfigError`` naming the file when the directory is missing or a file is not valid."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ConfigError(f"{results_dir} is not a directory: pass --results DIR with the "
                          f"results/*.json of `smallfoot bench`")  # fmt: skip
    collected = []
    for path in sorted(results_dir.glob("*.json")):
        if path.stem.endswith("-quick"):
            continue
        try:
            document = json.loads(path.read_text())
            claims = [Claim.from_dict(item) for item in document.get("claims") or []]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: invalid claims ({exc}); recompute them with "
                              f"`smallfoot bench {path.stem} --claims-only`") from exc  # fmt: skip
        collected += [CollectedClaim(document.get("benchmark", path.stem), c) for c in claims]
    return collected


def claims_summary(collected: list[CollectedClaim]) -> dict:
    """``{"met": n, "not_met": m, "claims": [claim dicts with their benchmark]}``."""
    met = sum(item.claim.met for item in collected)
    return {
        "met": met,
        "not_met": len(collected) - met,
        "claims": [{"benchmark": item.benchmark, **item.claim.to_dict()} for item in collected],
    }
