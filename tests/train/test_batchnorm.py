import torch
from torch import nn

from smallfoot.data import load_dataset
from smallfoot.train import Callback, RecalibrateBatchNorm, TrainConfig, Trainer


def test_recalibration_recomputes_statistics_over_the_training_set_before_evaluation():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=48)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    seen_at_evaluation = {}

    class RecordBeforeEvaluation(Callback):
        def on_train_epoch_end(self, trainer, epoch):
            seen_at_evaluation["mean"] = model[1].running_mean.clone()

    trainer = Trainer(
        model,
        train,
        train,
        TrainConfig(epochs=1, batch_size=8, lr=0.1),
        callbacks=[RecalibrateBatchNorm(batch_size=16), RecordBeforeEvaluation()],
        progress=False,
    )
    trainer.fit()
    with torch.no_grad():
        hidden = model[0](train.x)  # the final weights' inputs to the batch norm
    torch.testing.assert_close(model[1].running_mean, hidden.mean(0))
    # the running variance is the plain mean of the 3 batches' unbiased variances
    batch_vars = torch.stack([hidden[i : i + 16].var(0) for i in (0, 16, 32)])
    torch.testing.assert_close(model[1].running_var, batch_vars.mean(0))
    assert int(model[1].num_batches_tracked) == 3
    torch.testing.assert_close(seen_at_evaluation["mean"], hidden.mean(0))


def test_recalibration_changes_nothing_in_a_model_without_batch_norm():
    train = load_dataset("synthetic", "train", shape=(4,), num_classes=2, size=16)

    def fitted(callbacks):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
        config = TrainConfig(epochs=2, batch_size=8)
        Trainer(model, train, train, config, callbacks=callbacks, progress=False).fit()
        return model.state_dict()

    plain, recalibrated = fitted([]), fitted([RecalibrateBatchNorm()])
    for name, value in plain.items():
        assert torch.equal(value, recalibrated[name]), name
