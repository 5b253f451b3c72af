import dataclasses
import tomllib

import pytest

from smallfoot.config import (
    RunConfig,
    apply_overrides,
    command_args,
    config_from_dict,
    field_help,
    load_config,
    save_config,
    train_command,
)
from smallfoot.errors import ConfigError


def test_round_trip(tmp_path):
    config = RunConfig(
        model="mlp",
        epochs=7,
        model_options={"widths": [64, 32]},
        method_options={"inr": 0.3},
        data_options={"pad_to": 32},
        loss_options={"target_values": [0, 16]},
    )
    path = save_config(config, tmp_path / "config.toml")
    assert load_config(path) == config


def test_file_then_flags_precedence(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "mlp"\nepochs = 4\nlr = 0.2\n[model_options]\nwidths = [8]\ndropout = 0.1\n'
    )
    config = apply_overrides(load_config(path), {"epochs": 9, "model_options": {"widths": [16]}})
    assert (config.model, config.epochs, config.lr) == ("mlp", 9, 0.2)
    assert config.model_options == {"widths": [16], "dropout": 0.1}


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*epochs"):
        load_config(path)


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"optimizer": "adam"}, "choose one of: sgd, adamw"),
        ({"schedule": "step"}, "constant, cosine, multistep"),
        ({"label_noise": 2.0}, "label_noise"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_impossible_values(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values).validate()


def test_table_must_be_table():
    with pytest.raises(ConfigError, match="must be a table"):
        config_from_dict({"model_options": 3})


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(dataset="digits", model="mlp", epochs=7, lr=0.2, augment=True),
        RunConfig(schedule="multistep", milestones=[0.3, 0.6, 0.9], gamma=0.2, train_limit=500),
        RunConfig(
            method="facto",
            measure_memory=False,
            method_options={"inr": 0.5, "direct_decay": False},
            model_options={"widths": [8, 16, 32, 32]},
            data_options={"pad_to": 32},
            loss_options={"target_values": [0, 16], "scale": 1},
            loss="exp-ga",
            label_noise=0.2,
            filter="k=42",
        ),
    ],
)
def test_train_command_rebuilds_the_config(run_cli, config):
    """`smallfoot train $(command_args(config)) --print-config` resolves to ``config`` itself:
    a benchmark row's recorded command is the run it made."""
    from smallfoot.methods import get_method

    code, out, err = run_cli(*command_args(config), "--print-config")
    assert code == 0, err
    rebuilt = config_from_dict(tomllib.loads(out))
    options = get_method(rebuilt.method, rebuilt.method_options).options
    assert options == get_method(config.method, config.method_options).options
    assert dataclasses.replace(rebuilt, method_options={}) == dataclasses.replace(
        config, method_options={}
    )
    assert train_command(config).startswith("smallfoot train")


def test_field_help_covers_every_field():
    assert set(field_help()) == {f.name for f in dataclasses.fields(RunConfig)}
