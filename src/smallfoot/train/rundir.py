"""What every training loop keeps in its run directory, shared by the Trainer and the staged
methods (subspace's two stages, layer-wise units, partition-wise partitions): the epoch log
``metrics.jsonl`` and the words that tell a user how to continue an interrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smallfoot._io import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """A run directory's ``metrics.jsonl``: one JSON object per finished epoch, of every stage
    of the run (staged methods tag each line with its ``stage``, ``unit`` or ``partition``).

    Lines are appended as epochs finish; on resume the log is rewritten atomically from the
    checkpoint's history, since an epoch that finished after the last checkpoint is trained
    again and must not be logged twice. Without a directory (``None``) nothing is written."""

    def __init__(self, directory: str | Path | None):
        self.path = Path(directory) / METRICS_FILE if directory is not None else None

    def append(self, record: dict[str, Any]) -> None:
        """Add one finished epoch's record."""
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log by ``records`` (atomically: a reader sees the old or the new log)."""
        if self.path is not None:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def read(self) -> list[dict[str, Any]]:
        """The records logged so far (none when there is no log yet)."""
        if self.path is None or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def resume_hint(run_dir: str | Path | None, extra: str = "") -> str:
    """``"; continue with `smallfoot train --resume RUN_DIR EXTRA`"`` to end an interruption
    message, or ``""`` for a run without a directory (there is nothing to resume)."""
    if run_dir is None:
        return ""
    flags = f" {extra}" if extra else ""
    return f"; continue with `smallfoot train --resume {run_dir}{flags}`"
