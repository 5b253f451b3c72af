import json

import pytest
import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, TrainingInterrupted
from smallfoot.methods import get_method
from smallfoot.train import Trainer, run_training


def facto_config(tmp_path, **overrides):
    values = dict(
        dataset="synthetic",
        model="cnn4",
        method="facto",
        epochs=3,
        batch_size=16,
        out_dir=str(tmp_path),
        progress=False,
        measure_memory=False,
        model_options={"widths": [4, 8, 8, 8], "batch_norm": False},
        data_options={"shape": [1, 8, 8], "num_classes": 3, "size": 48},
        method_options={"inr": 0.5, "kernel": 2, "apply_ratio": 1.0, "frt_epochs": 1},
    )
    values.update(overrides)
    return RunConfig(**values)


def test_options_from_cli_strings_and_validation():
    method = get_method("facto", {"inr": "0.2", "kernel": "3", "apply-ratio": "1.0"})
    assert (method.options.inr, method.options.kernel, method.options.apply_ratio) == (0.2, 3, 1.0)
    with pytest.raises(ConfigError, match="--inr"):
        get_method("facto", {"inr": "1.5"})
    with pytest.raises(ConfigError, match="--kernel"):
        get_method("facto", {"kernel": "0"})


def test_run_records_phases_and_resumes_exactly(tmp_path, monkeypatch):
    run_training(facto_config(tmp_path, run_name="straight"))
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["facto_phase"] for line in lines] == [
        "full-rank",
        "low-rank",
        "low-rank",
    ]
    original = Trainer.run_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    with pytest.raises(TrainingInterrupted):
        run_training(facto_config(tmp_path, run_name="resumed"))
    monkeypatch.setattr(Trainer, "run_epoch", original)
    run_training(RunConfig(), resume_dir=tmp_path / "resumed")
    a, b = (
        torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
        for name in ("straight", "resumed")
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
