"""The losses benchmark: table 4.1/4.2 rows are `smallfoot train` configurations; claims come
from the rows."""

import pytest
from benchmarks.losses import (
    MLP_LOSSES,
    VGG_LOSSES,
    epochs_to,
    losses_claims,
    mlp_config,
    vgg_config,
)

from smallfoot.losses import build_loss


def test_configs_follow_the_thesis_protocols():
    for loss in MLP_LOSSES:
        config = mlp_config(loss, 0.1, 60).validate()
        assert (config.schedule, config.weight_decay, config.model) == ("constant", 0.0, "mlp")
        assert build_loss(loss, 10, **config.loss_options)[0].scale == 1.0  # the thesis' loss
    for loss in VGG_LOSSES:
        config = vgg_config(loss, 12, 10000).validate()
        assert (config.schedule, config.milestones, config.gamma) == ("multistep", [0.5, 0.75], 0.1)
        build_loss(loss, 10, **config.loss_options)
    assert vgg_config("exp-ga", 12, 10000).lr == 0.01  # table 4.2


def test_epochs_to_a_target_error():
    assert epochs_to([9.0, 6.0, 5.0, 4.0], 5.0) == 3
    assert epochs_to([9.0, 6.0], 5.0) is None


def mlp(loss, epochs):
    return {"section": "table 4.1: MLP 64-50-10 on digits, fixed rate", "loss": loss,
            "epochs_to_target": epochs}  # fmt: skip


def vgg(loss, final):
    return {"loss": loss, "final_error_pct": final, "error_curve_pct": [final]}


def test_claims_from_rows():
    rows = [mlp("sigmoid-ce", e) for e in (40, 50, 60)] + [
        mlp("linear-mse", e) for e in (30, 35, 70)
    ]
    rows += [vgg("softmax-ce", 10.0), vgg("exp-ga", 9.0), vgg("linear-mse", 10.5)]
    claims = {c.id: c for c in losses_claims(rows, "smallfoot bench losses")}
    faster = claims["losses.faster_than_sigmoid"]
    assert faster.measured == pytest.approx(35 / 50) and faster.met and faster.seeds == 3
    deep = claims["losses.deep_net"]
    assert deep.measured == pytest.approx(0.5) and not deep.met  # linear-mse ends above softmax
    # a loss that never reaches the target in some seed gives no ratio
    rows[0]["epochs_to_target"] = None
    assert "losses.faster_than_sigmoid" not in {c.id for c in losses_claims(rows, "x")}
