"""The run directory's epoch log and resume hint, shared by the Trainer and staged methods."""

import json

from smallfoot.train import MetricsLog, resume_hint


def test_metrics_log_appends_rewrites_and_reads(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.read() == []
    log.append({"epoch": 1, "stage": "sampling"})
    log.append({"epoch": 2, "stage": "sampling"})
    assert log.read() == [{"epoch": 1, "stage": "sampling"}, {"epoch": 2, "stage": "sampling"}]
    log.rewrite([{"epoch": 1}])  # resume: epoch 2 never reached its checkpoint
    assert (tmp_path / "metrics.jsonl").read_text() == json.dumps({"epoch": 1}) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left


def test_a_run_without_a_directory_logs_nothing_and_has_nothing_to_resume(tmp_path):
    log = MetricsLog(None)
    log.append({"epoch": 1})
    log.rewrite([{"epoch": 1}])
    assert log.read() == [] and resume_hint(None) == ""
    assert resume_hint(tmp_path, "--lr 0.01") == (
        f"; continue with `smallfoot train --resume {tmp_path} --lr 0.01`"
    )
