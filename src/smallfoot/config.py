"""The configuration of a run: a dataclass, read from TOML, overridden from the command line.

A TOML file holds the top-level fields of :class:`RunConfig` plus optional tables
``[model_options]`` (options of the model builder), ``[method_options]`` (options of the
method), ``[loss_options]`` (options of the loss) and ``[data_options]`` (options of the
dataset loader)::

    dataset = "fashion-mnist"
    model = "cnn4"
    epochs = 3
    [model_options]
    widths = [32, 64, 128, 128]
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import shlex
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallfoot._io import atomic_write_text
from smallfoot.errors import ConfigError


@dataclass
class RunConfig:
    """Everything that defines a training run; the run directory stores it as config.toml."""

    dataset: str = "fashion-mnist"
    """registered dataset name (`smallfoot datasets`)"""
    model: str = "cnn4"
    """registered model name (`smallfoot models`)"""
    method: str = "baseline"
    """registered method name (`smallfoot methods`)"""
    epochs: int = 3
    """passes over the training set"""
    batch_size: int = 128
    """mini-batch size"""
    optimizer: str = "sgd"
    """sgd (with momentum) or adamw"""
    lr: float = 0.05
    """peak learning rate"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 5e-4
    """L2 weight decay (decoupled for adamw)"""
    schedule: str = "cosine"
    """learning-rate schedule: constant, cosine or multistep (stepped per batch)"""
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    """multistep: fractions of training at which the rate is multiplied by gamma"""
    gamma: float = 0.1
    """multistep: factor at each milestone"""
    seed: int = 0
    """seeds every generator (weights, data order, augmentation, dropout)"""
    augment: bool = False
    """random crop (padding 4 for 32px images, 2 otherwise) and, for colour images, horizontal flip"""
    workers: int = 0
    """processes reading the batches (torch.utils.data.DataLoader workers); 0 reads in the training process. Helps when the images are decoded from files"""
    data_root: str | None = None
    """directory holding the dataset files (CIFAR, MNIST); Fashion-MNIST defaults to the Debian path"""
    train_limit: int | None = None
    """train on this many samples (seeded choice) instead of the whole training set"""
    test_limit: int | None = None
    """evaluate on this many test samples"""
    label_noise: float = 0.0
    """fraction of training labels replaced by a different random class"""
    filter: str | None = None
    """data filtering: "k=42" k-filters once before training; "k=10,online=true,from=2,cap=0.6" (online k-filter) and "loss=0.25,from=2" (loss filter) filter during training"""
    loss: str = "softmax-ce"
    """output loss: softmax-ce, exp-ga, pow3-ga, linear-mse or sigmoid-ce"""
    init: str | None = None
    """state-dict file to initialise the model from (e.g. a closed-form fit)"""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)"""
    out_dir: str = "runs"
    """parent directory of run directories"""
    run_name: str | None = None
    """run directory name (default: time stamp + dataset + model + method)"""
    measure_memory: bool = True
    """measure one training step with smallfoot.memory and record it in summary.json"""
    progress: bool = True
    """show a progress bar"""
    model_options: dict[str, Any] = field(default_factory=dict)
    """options of the model builder ([model_options] table)"""
    method_options: dict[str, Any] = field(default_factory=dict)
    """options of the method ([method_options] table)"""
    loss_options: dict[str, Any] = field(default_factory=dict)
    """options of the loss ([loss_options] table)"""
    data_options: dict[str, Any] = field(default_factory=dict)
    """options of the dataset loader ([data_options] table), e.g. pad_to = 32"""

    def validate(self) -> RunConfig:
        """Check types and value ranges before any work; raise ``ConfigError`` naming the
        field, the value and the valid range."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "momentum", "weight_decay", "gamma", "label_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not all(isinstance(m, (int, float)) and 0.0 <= m <= 1.0 for m in self.milestones):
            raise ConfigError(f"milestones must be fractions in [0, 1], got {self.milestones!r}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ConfigError(f"label_noise must lie in [0, 1], got {self.label_noise}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: sgd, adamw")
        if self.schedule not in ("constant", "cosine", "multistep"):
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; choose one of: constant, cosine, multistep"
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        return self


_TABLES = {
    name: name for name in ("model_options", "method_options", "loss_options", "data_options")
}


@functools.cache
def field_help() -> dict[str, str]:
    """Each :class:`RunConfig` field's help: the docstring under the field in its source."""
    tree = ast.parse(inspect.getsource(RunConfig))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:], strict=False):
        documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and documented and isinstance(after.value.value, str):
            out[node.target.id] = after.value.value
    return out


FLAG_NAMES = {"measure_memory": "memory"}
"""Fields whose command-line flag is not the field's own name (``--memory/--no-memory``)."""

COMMAND_FIELDS = ("method", "out_dir", "run_name", "progress", "measure_memory")
"""Fields that `train` declares itself (`compare` gives them other defaults); every other
top-level field is a flag shared by the commands that train."""


def flag_name(field: str) -> str:
    """The ``--flag`` of a :class:`RunConfig` field (``batch_size`` -> ``--batch-size``)."""
    return "--" + FLAG_NAMES.get(field, field).replace("_", "-")


def field_types() -> dict[str, Any]:
    """Each top-level :class:`RunConfig` field's type (``typing`` objects, resolved)."""
    return typing.get_type_hints(RunConfig)


def _arg_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_arg_value(v) for v in value)
    return str(value)


def command_args(config: RunConfig, command: str = "train") -> list[str]:
    """The ``smallfoot train`` arguments that rebuild ``config`` from the defaults: one flag
    per field that differs from :class:`RunConfig`'s default (``--model-opt``, ``--data-opt``,
    ``--loss-opt`` KEY=VALUE for the option tables; method options as ``--name VALUE``).
    ``progress`` and where the run is written are left out: they change no figure."""
    default = RunConfig()
    args = [command]
    for name in field_names():
        value = getattr(config, name)
        if name in ("progress", "out_dir", "run_name") or value == getattr(default, name):
            continue
        if isinstance(value, bool):
            base = FLAG_NAMES.get(name, name).replace("_", "-")
            args.append(f"--{base}" if value else f"--no-{base}")
        else:
            args += [flag_name(name), _arg_value(value)]
    for table, flag in (("model_options", "--model-opt"), ("data_options", "--data-opt"),
                        ("loss_options", "--loss-opt")):  # fmt: skip
        for key, value in getattr(config, table).items():
            args += [flag, f"{key}={_arg_value(value)}"]
    for key, value in config.method_options.items():
        args += ["--" + key.rstrip("_").replace("_", "-"), _arg_value(value)]
    return args


def train_command(config: RunConfig) -> str:
    """The shell command ``smallfoot train ...`` that runs ``config`` (see :func:`command_args`)."""
    return shlex.join(["smallfoot", *command_args(config)])


def field_names() -> list[str]:
    """Names of the top-level (non-table) fields of :class:`RunConfig`."""
    return [f.name for f in dataclasses.fields(RunConfig) if f.name not in _TABLES.values()]


def config_from_dict(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a TOML-shaped dict; unknown keys raise ``ConfigError``."""
    known = set(field_names())
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            kwargs[_TABLES[key]] = dict(value)
        elif key in known:
            kwargs[key] = value
        else:
            raise ConfigError(
                f"{source}: unknown key {key!r}; valid keys: {', '.join(sorted(known | set(_TABLES)))}"
            )
    try:
        return RunConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a run configuration from a TOML file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give a .toml file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; give a .toml file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    return config_from_dict(values, str(path))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The TOML-shaped dict of ``config`` (tables for the option dicts, None values left out)."""
    out: dict[str, Any] = {}
    for name in field_names():
        value = getattr(config, name)
        if value is not None:
            out[name] = value
    for table, attr in _TABLES.items():
        if getattr(config, attr):
            out[table] = getattr(config, attr)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def dumps_toml(values: dict[str, Any]) -> str:
    """Serialise a dict of scalars, lists and one level of tables as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, table in values.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` as TOML (atomically); ``load_config`` reads it back unchanged."""
    return atomic_write_text(path, dumps_toml(config_to_dict(config)))


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with the given fields replaced; table fields are merged key by key."""
    values = dataclasses.asdict(config)
    for key, value in overrides.items():
        if key in _TABLES.values():
            values[key] = {**values[key], **value}
        elif key in values:
            values[key] = value
        else:
            raise ConfigError(f"unknown config field {key!r}")
    return RunConfig(**values)
