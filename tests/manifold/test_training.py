"""``--method manifold`` trains from its defaults (issue 16): the digits runs of the CLI, with the
default batch of 128 and with a W=8 bottleneck at batch 5."""

import math

import pytest

from smallfoot.config import RunConfig
from smallfoot.runner import run_training


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch_size, method_options, floor",
    [
        (
            128,
            {},
            0.80,
        ),  # smallfoot train --dataset digits --model cnn4 --method manifold --epochs 2
        (5, {"bottleneck_width": 8}, 0.50),  # ... --bottleneck-width 8 --batch-size 5
    ],
)
def test_digits_trains_from_the_defaults(tmp_path, batch_size, method_options, floor):
    config = RunConfig(
        dataset="digits",
        model="cnn4",
        method="manifold",
        epochs=2,
        batch_size=batch_size,
        method_options=method_options,
        out_dir=str(tmp_path),
        progress=False,
        measure_memory=False,
    )
    summary = run_training(config)
    assert math.isfinite(summary["test_loss"])
    assert summary["test_accuracy"] >= floor  # chance is 0.1
    assert summary["model"] == "cnn4_bottleneck"
    assert summary["lr_used"] == pytest.approx(config.lr * min(1.0, batch_size / 128))
