"""The ``smallfoot`` command line: sub-commands call library functions, nothing else."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import sys
import types as types_module
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import smallfoot
from smallfoot.errors import BudgetError, ConfigError, SmallfootError, TrainingInterrupted

app = typer.Typer(
    help="smallfoot: train deep networks in a fraction of the memory, and measure what it costs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: switches without a <bool> placeholder
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"smallfoot {smallfoot.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """smallfoot: memory-efficient training and an honest memory meter."""


def parse_value(text: str) -> Any:
    """A CLI value: int, float, bool, comma-separated list of those, or the string itself."""
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part != ""]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_key_values(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": ["x", "y"]}``; malformed items raise ``ConfigError``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def parse_positive_ints(text: str, flag: str, example: str) -> list[int]:
    """``"784,392"`` -> ``[784, 392]``; anything else raises a ``ConfigError`` naming ``flag``."""
    values = parse_value(text)
    values = values if isinstance(values, list) else [values]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ConfigError(
            f"{flag} {text!r} must be positive integers separated by commas, e.g. {example}"
        )
    return values


def check_writable(path: Path, flag: str) -> Path:
    """Refuse (``ConfigError``), before any work, an output file that cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag} {path} is not writable; give another path")
    return path


def parse_extra_flags(args: list[str]) -> dict[str, Any]:
    """Method options given as extra flags: ``--inr 0.3 --kernel=2 --flag`` -> dict (strings kept)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; method options look like --name VALUE")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[name.replace("-", "_")] = value
    return out


# -- the run flags: one definition shared by `train` and `compare` -------------------------
@dataclass(frozen=True)
class RunFlag:
    """A flag that sets a :class:`~smallfoot.config.RunConfig` field (or a loss option)."""

    dest: str
    """the command parameter (a RunConfig field, a loss option, or model_opt/data_opt)"""
    names: tuple[str, ...]
    annotation: Any
    help: str
    default: Any = None
    """the value when the flag is absent (None: keep the config file's value)"""

    def parameter(self) -> inspect.Parameter:
        """The typer parameter of this flag; help ends with the RunConfig default."""
        from smallfoot.config import RunConfig

        help_text = self.help
        if self.dest in RunConfig.__dataclass_fields__:
            default = getattr(RunConfig(), self.dest)
            if isinstance(default, bool):
                default = self.names[0].split("/")[0 if default else 1].lstrip("-")
            elif isinstance(default, list):
                default = ",".join(str(v) for v in default)
            help_text += f" [default: {default if default is not None else 'none'}]"
        return inspect.Parameter(
            self.dest,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(self.default, *self.names, help=help_text),
            annotation=self.annotation,
        )


LIST_HELP = " Comma-separated."


def _field_flags() -> tuple[RunFlag, ...]:
    """One flag per top-level :class:`~smallfoot.config.RunConfig` field (except those each
    command declares itself), named, typed and helped from the dataclass so they cannot drift."""
    from smallfoot.config import COMMAND_FIELDS, field_help, field_names, field_types, flag_name

    flags = []
    types, helps = field_types(), field_help()
    for name in field_names():
        if name in COMMAND_FIELDS:
            continue
        kind = types[name]
        optional = typing.get_origin(kind) in (typing.Union, types_module.UnionType)
        base = [a for a in typing.get_args(kind) if a is not type(None)][0] if optional else kind
        text = helps[name][0].upper() + helps[name][1:] + "."
        if base is bool:
            flag = flag_name(name)
            flags.append(RunFlag(name, (f"{flag}/--no-{flag[2:]}",), bool | None, text))
        elif typing.get_origin(base) is list:
            flags.append(RunFlag(name, (flag_name(name),), str | None, text + LIST_HELP))
        else:
            flags.append(RunFlag(name, (flag_name(name),), base | None, text))
    return tuple(flags)


RUN_FLAGS = (
    *_field_flags(),
    RunFlag(
        "target_values",
        ("--target-values",),
        str | None,
        "Loss targets for (other, true) class, e.g. 0,16.",
    ),
    RunFlag("alpha", ("--ga-alpha",), float | None, "Gradient-amplifying loss alpha."),
    RunFlag("beta", ("--ga-beta",), float | None, "Gradient-amplifying loss beta."),
    RunFlag(
        "model_opt",
        ("--model-opt",),
        list[str],
        "Model option KEY=VALUE, repeatable (see `smallfoot models NAME`).",
        default=[],
    ),
    RunFlag(
        "data_opt",
        ("--data-opt",),
        list[str],
        "Dataset option KEY=VALUE, e.g. pad_to=32 (repeatable).",
        default=[],
    ),
    RunFlag(
        "loss_opt",
        ("--loss-opt",),
        list[str],
        "Loss option KEY=VALUE, e.g. scale=1 (repeatable).",
        default=[],
    ),
)
"""Flags of every command that trains (`train`, `compare`); method options follow as --flags."""

LOSS_FLAGS = ("target_values", "alpha", "beta")
OPTION_TABLE_FLAGS = ("model_opt", "data_opt", "loss_opt")
LIST_FIELDS = tuple(flag.dest for flag in RUN_FLAGS if flag.help.endswith(LIST_HELP))


def with_run_flags(command):
    """Decorator: add :data:`RUN_FLAGS` to ``command``'s options; the command receives their
    values as one dict, its ``run_flags`` parameter."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "run_flags"]
    params = own + [flag.parameter() for flag in RUN_FLAGS]

    @functools.wraps(command)
    def wrapper(**kwargs):
        run_flags = {flag.dest: kwargs.pop(flag.dest) for flag in RUN_FLAGS}
        return command(**kwargs, run_flags=run_flags)

    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def method_options_from_flags(ctx: typer.Context, methods: list[str]) -> dict[str, Any]:
    """Method options given as extra flags (``ctx.args``), each checked against the options
    of ``methods``; an unknown one raises ``ConfigError`` suggesting the closest flag of the
    command or method option."""
    from smallfoot.methods import list_methods

    options = parse_extra_flags(ctx.args)
    command_flags = [
        name
        for param in ctx.command.params
        for name in [*param.opts, *getattr(param, "secondary_opts", [])]
        if name.startswith("--")
    ]
    known = method_flag_owners(methods)
    for key in options:
        flag = "--" + key.rstrip("_").replace("_", "-")
        if flag in known:
            continue
        if len(methods) == 1:
            listed = ", ".join(known) or "none"
            where = f"{listed}, see `smallfoot methods {methods[0]}`"
        else:
            where = "`smallfoot methods NAME`"
        owners = method_flag_owners([cls.name for cls in list_methods()]).get(flag)
        if owners:
            raise ConfigError(
                f"{flag} is an option of method {' and '.join(owners)}, not of "
                f"{', '.join(methods)}; add --method {owners[0]} or drop it (see {where})"
            )
        candidates = {name[2:]: name for name in command_flags + sorted(known)}
        close = difflib.get_close_matches(flag[2:], list(candidates), n=1, cutoff=0.6)
        hint = f"; did you mean {candidates[close[0]]}?" if close else ""
        raise ConfigError(
            f"no such option {flag}{hint} (flags: `smallfoot {ctx.info_name} --help`; "
            f"method options: {where})"
        )
    return options


def method_flag_owners(methods: list[str]) -> dict[str, list[str]]:
    """``--flag`` -> the methods among ``methods`` that take it as an option."""
    from smallfoot.methods import get_method_class, option_fields

    owners: dict[str, list[str]] = {}
    for name in methods:
        for field_name, _, _, _ in option_fields(get_method_class(name).Options):
            owners.setdefault("--" + field_name.rstrip("_").replace("_", "-"), []).append(name)
    return owners


def run_overrides(run_flags: dict[str, Any]) -> dict[str, Any]:
    """The RunConfig overrides the run flags give (absent flags give none)."""
    overrides = {
        key: value
        for key, value in run_flags.items()
        if value is not None and key not in LOSS_FLAGS and key not in OPTION_TABLE_FLAGS
    }
    for key in LIST_FIELDS:
        if key in overrides:
            value = parse_value(overrides[key])
            overrides[key] = value if isinstance(value, list) else [value]
    loss_options = {}
    if run_flags["loss_opt"]:
        loss_options = parse_key_values(run_flags["loss_opt"], "--loss-opt")
    loss_options |= {key: run_flags[key] for key in LOSS_FLAGS if run_flags[key] is not None}
    if run_flags["target_values"] is not None:
        loss_options["target_values"] = parse_value(run_flags["target_values"])
    if loss_options:
        overrides["loss_options"] = loss_options
    if run_flags["model_opt"]:
        overrides["model_options"] = parse_key_values(run_flags["model_opt"], "--model-opt")
    if run_flags["data_opt"]:
        overrides["data_options"] = parse_key_values(run_flags["data_opt"], "--data-opt")
    return overrides


def build_run_config(
    ctx: typer.Context,
    config: Path | None,
    overrides: dict[str, Any],
    methods: list[str] | None = None,
):
    """The RunConfig of ``--config`` (or the defaults) with ``overrides`` and the method
    options in ``ctx.args`` applied; ``methods`` (default: the config's method) are the
    methods those options are checked against."""
    from smallfoot.config import RunConfig, apply_overrides, load_config

    base = load_config(config) if config is not None else RunConfig()
    if "method" in overrides and overrides["method"] != base.method:
        base.method_options = {}  # options of the file's method do not apply to another one
    method = overrides.get("method", base.method)
    options = method_options_from_flags(ctx, methods or [method])
    return apply_overrides(base, {**overrides, "method_options": options})


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_run_flags
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="TOML run configuration; flags override it."
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue the run in this directory from its checkpoint; takes only --epochs, "
        "--lr, --data-root, --workers, --device, --progress/--no-progress and "
        "--memory/--no-memory.",
    ),
    method: str | None = typer.Option(
        None,
        "--method",
        help="Method name; its options follow as --flags (see `smallfoot methods NAME`). "
        "[default: baseline]",
    ),
    out_dir: str | None = typer.Option(
        None, "--out-dir", help="Parent directory of run directories. [default: runs]"
    ),
    run_name: str | None = typer.Option(
        None,
        "--run-name",
        help="Name of the run directory. [default: <time>-<dataset>-<model>-<method>]",
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Show a progress bar. [default: progress]"
    ),
    measure_memory: bool | None = typer.Option(
        None,
        "--memory/--no-memory",
        help="Measure a training step's memory. [default: memory]",
    ),
    nproc: int = typer.Option(
        1,
        "--nproc",
        help="Train data-parallel on this many local processes (torch.distributed, gloo on CPU); "
        "several machines: torchrun ... -m smallfoot.distributed.",
    ),
    sync: str = typer.Option(
        "ddp",
        "--sync",
        help="With --nproc: ddp (gradients all-reduced), average (entropy-coded parameters "
        "averaged, thesis ch. 3), average-ef (the same with error feedback), or DDP with a "
        "gradient hook: ddp-entropy (ours, with error feedback), ddp-fp16 or ddp-powersgd "
        "(PyTorch's).",
    ),
    sync_every: int = typer.Option(
        1,
        "--sync-every",
        help="With --sync average or average-ef: steps between parameter averages.",
    ),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        help="Print the resolved run configuration (TOML, for --config) and exit; trains nothing.",
    ),
    run_flags: dict[str, Any] | None = None,
):
    """Train a model with a method; writes a run directory and prints a summary."""
    from smallfoot.config import RunConfig
    from smallfoot.runner import run_training

    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {nproc}")
    if nproc == 1 and (sync != "ddp" or sync_every != 1):
        raise ConfigError("--sync and --sync-every need --nproc 2 or more")

    own = {
        "method": method,
        "out_dir": out_dir,
        "run_name": run_name,
        "progress": progress,
        "measure_memory": measure_memory,
    }
    overrides = {**run_overrides(run_flags), **{k: v for k, v in own.items() if v is not None}}
    if resume is not None:
        if config is not None:
            overrides["config"] = config
        if ctx.args:
            from smallfoot.methods import list_methods

            all_methods = [cls.name for cls in list_methods()]
            overrides["method_options"] = method_options_from_flags(ctx, all_methods)
        if nproc > 1:
            from smallfoot.distributed import launch

            if overrides or config is not None:
                raise ConfigError(
                    "--resume with --nproc continues the run as it was; drop the other flags"
                )
            print_summary(
                launch(RunConfig(), nproc, sync=sync, every=sync_every, resume_dir=resume)
            )
            return
        print_summary(run_training(RunConfig(), resume_dir=resume, resume_overrides=overrides))
        return
    run_config = build_run_config(ctx, config, overrides)
    if print_config:
        from smallfoot.config import config_to_dict, dumps_toml

        typer.echo(dumps_toml(config_to_dict(run_config.validate())), nl=False)
        return
    if nproc > 1:
        from smallfoot.distributed import launch

        print_summary(launch(run_config, nproc, sync=sync, every=sync_every))
        return
    print_summary(run_training(run_config))


def print_summary(summary: dict[str, Any]) -> None:
    """Print a run summary as a table."""
    table = Table(title="smallfoot run summary", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")  # the run directory is what --resume needs
    memory = summary.get("memory") or {}
    rows = [
        (
            "dataset / model / method",
            f"{summary['dataset']} / {summary['model']} / {summary['method']}",
        ),
        ("epochs", str(summary["epochs"])),
        *(
            [
                (
                    "processes",
                    f"{summary['world_size']} ({summary.get('sync', 'ddp')}, "
                    f"{summary.get('threads_per_rank', '?')} threads each)",
                )
            ]
            if summary.get("world_size", 1) > 1
            else []
        ),
        ("train accuracy", _pct(summary.get("train_accuracy"))),
        ("test accuracy", _pct(summary.get("test_accuracy"))),
        (
            "test loss",
            f"{summary['test_loss']:.4f}" if summary.get("test_loss") is not None else "-",
        ),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("parameters", f"{summary['parameters']:,}"),
    ]
    if memory.get("peak") is not None:
        rows += [
            (
                "peak memory (one step)",
                f"{_mib(memory.get('peak'))} ({memory.get('peak_phase', '?')}"
                + (f", stage {memory['stage']})" if memory.get("stage") else ")"),
            ),
            ("saved activations", _mib(memory.get("saved_activations"))),
        ]
    rows.append(("run directory", summary["run_dir"]))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if value is not None else "-"


def _mib(value) -> str:
    return f"{value / 2**20:.2f} MiB" if value is not None else "-"


@app.command()
def datasets(
    data_root: str | None = typer.Option(
        None, "--data-root", help="Where to look for (or download) files."
    ),
    download: str | None = typer.Option(
        None, "--download", help="Download this dataset into --data-root (needs a network)."
    ),
):
    """List the datasets, and whether and where each is available locally."""
    from smallfoot.data import list_datasets
    from smallfoot.errors import DatasetError

    if download is not None:
        from smallfoot.data.download import download_dataset

        if data_root is None:
            raise ConfigError("--download needs --data-root DIR")
        for path in download_dataset(download, data_root):
            console.print(f"verified {path}")
        return
    table = Table(title="datasets")
    for column in ("name", "description", "available"):
        table.add_column(column)
    root = Path(data_root) if data_root else None
    for info in list_datasets():
        try:
            where = f"[green]yes[/green]: {info.locate(root)}" if info.locate else "yes"
        except DatasetError as exc:
            where = f"[red]no[/red]: {exc}"
        table.add_row(info.name, info.description, where)
    console.print(table)


def input_from_flags(
    dataset: str | None,
    data_root: str | None,
    data_opt: list[str],
    input_shape: str | None,
    classes: int | None,
) -> tuple[tuple[int, ...], int, bool, dict[str, Any]]:
    """``(input shape, classes, streamed, data options)`` of a command's ``--dataset``
    (with ``--data-root`` and ``--data-opt``) or, without one, its ``--input`` (default
    3x32x32) and ``--classes`` (default 10); mixing the two kinds is refused."""
    from smallfoot.runner.step import dataset_input

    if dataset is not None:
        if input_shape is not None or classes is not None:
            raise ConfigError("--dataset sets the input shape and classes; drop --input/--classes")
        data_options = parse_key_values(data_opt, "--data-opt")
        shape, classes, streamed = dataset_input(dataset, data_root, data_options)
        return tuple(shape), classes, streamed, data_options
    if data_root is not None or data_opt:
        raise ConfigError("--data-root and --data-opt need --dataset NAME")
    return (
        parse_input_shape(input_shape or "3x32x32"),
        10 if classes is None else classes,
        False,
        {},
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> ``(3, 32, 32)``; raises ``ConfigError`` on anything else."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input shape {text!r} must look like CxHxW (e.g. 3x32x32) or D")
    return shape


@app.command()
def models(
    name: str | None = typer.Argument(None, help="A model: list its options with defaults."),
    input_shape: str = typer.Option(
        "3x32x32", "--input", help="Input shape CxHxW for the parameter counts."
    ),
    classes: int = typer.Option(10, "--classes", help="Number of classes."),
):
    """List the models with their parameter counts at the given input shape, or one model's
    options (`--model-opt KEY=VALUE`) with their defaults."""
    import torch

    from smallfoot.models import build_model, get_model_info, list_models, parameter_count
    from smallfoot.models import model_options as options_of

    if name is not None:
        info = get_model_info(name)
        console.print(f"{name}: {info.description}")
        table = Table(title=f"options of model {name} (--model-opt KEY=VALUE)")
        for column in ("key", "default"):
            table.add_column(column)
        for key, default in options_of(name):
            table.add_row(key, _option_text(default))
        console.print(table)
        return
    shape = parse_input_shape(input_shape)
    table = Table(title=f"models (parameters at input {input_shape}, {classes} classes)")
    for column in ("name", "parameters", "description"):
        table.add_column(column)
    for info in list_models():
        try:
            with torch.device("meta"):
                count = f"{parameter_count(build_model(info.name, shape, classes)):,}"
        except SmallfootError as exc:
            count = f"n/a ({exc})"
        table.add_row(info.name, count, info.description)
    console.print(table)


def _option_text(value: Any) -> str:
    """An option default as a user types it: lists comma-separated, None as none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_option_text(v) for v in value) or "(empty)"
    return str(value)


@app.command()
def methods(
    name: str | None = typer.Argument(None, help="A method: list its options with defaults."),
):
    """List the training methods, their capability flags and their options, or one method's
    options (extra flags of `smallfoot train --method NAME`) with defaults and help."""
    from smallfoot.methods import get_method_class, list_methods, option_fields

    if name is not None:
        cls = get_method_class(name)
        console.print(f"{name}: {cls.description}")
        console.print(f"your model (--model package.module:function): {cls.user_model}")
        console.print(f"your data (--dataset package.module:function): {_data_support(cls)}")
        table = Table(title=f"options of method {name} (extra flags of `smallfoot train`)")
        for column in ("option", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for key, _, default, help_text in option_fields(cls.Options):
            flag = "--" + key.rstrip("_").replace("_", "-")
            table.add_row(flag, _option_text(default), help_text)
        if not option_fields(cls.Options):
            table.add_row("(none)", "", "")
        console.print(table)
        return
    table = Table(title="methods")
    for column in ("name", "description", "your model", "your data", "flags", "options (default)"):
        table.add_column(column)
    for cls in list_methods():
        flags = [f for f in ("custom_backward", "changes_optimizer", "staged") if getattr(cls, f)]
        options = ", ".join(
            f"--{n.rstrip('_').replace('_', '-')} ({_option_text(d)})"
            for n, _, d, _ in option_fields(cls.Options)
        )
        table.add_row(
            cls.name, cls.description, cls.user_model, _data_support(cls), " ".join(flags),
            options or "-",
        )  # fmt: skip
    console.print(table)


def _data_support(cls) -> str:
    """What a method takes of a user's data: streams (an ``IterableDataset`` with
    ``in_memory=false``) or map-style datasets only."""
    if cls.streams:
        return "any dataset, streams too"
    return "map-style datasets (in memory or read on demand), no streams"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_run_flags
def compare(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="TOML run configuration shared by every method."
    ),
    methods_: str | None = typer.Option(
        None, "--methods", help="Comma-separated methods (default: all)."
    ),
    out_dir: str = typer.Option(
        "runs/compare", "--out-dir", help="Where the runs, compare.json and the plot go."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Save the accuracy-vs-memory plot here (PNG)."
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="Compare only the plans that fit this memory budget (e.g. 40MiB), as `smallfoot "
        "plan` ranks them; the baseline trains too, as the reference.",
    ),
    run_flags: dict[str, Any] | None = None,
):
    """Train one dataset/model with the baseline and every method; print one table, save one
    plot. Takes the run flags of `train`; method options follow as --flags."""
    from smallfoot.methods import list_methods
    from smallfoot.runner.compare import compare_methods, plot_comparison

    if plot is not None:
        check_writable(plot, "--plot")
    if budget is not None and methods_:
        raise ConfigError("--budget chooses the methods (the plans that fit); drop --methods")
    chosen = methods_.split(",") if methods_ else [cls.name for cls in list_methods()]
    base = build_run_config(ctx, config, run_overrides(run_flags), chosen)
    plans, limit = (None, None)
    if budget is not None:
        from smallfoot.plan import default_cache_path, fitting_plans

        plans, limit = fitting_plans(base, budget, cache=default_cache_path())
    rows = compare_methods(
        base,
        methods_.split(",") if methods_ else None,
        out_dir,
        plans=plans,
        on_start=_compare_started,
        on_row=_compare_finished,
    )
    title = f"{base.dataset} / {base.model}: methods compared"
    if limit is not None:
        title = f"{base.dataset} / {base.model}: the plans that fit {_mib(limit)}"
    print_comparison(rows, title)
    if limit is not None:
        for row in rows:
            if "error" not in row and row.get("peak") is not None:
                verdict = "within" if row["peak"] <= limit else "over"
                console.print(
                    f"{row.get('plan', row['method'])}: measured peak {_mib(row['peak'])}, "
                    f"{verdict} the budget",
                    soft_wrap=True,
                )
    console.print(f"rows: {Path(out_dir) / 'compare.json'}")
    if plot is not None:
        console.print(f"plot: {plot_comparison(rows, plot)}")
    failed = [row["method"] for row in rows if "error" in row]
    if failed:
        print(
            f"error: {len(failed)} of {len(rows)} methods failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def _compare_started(index: int, total: int, name: str, config, notes: list[str]) -> None:
    adapted = f"; adapted: {'; '.join(notes)}" if notes else ""
    console.print(
        f"[bold][{index + 1}/{total}][/bold] {name}: {config.model}, {config.epochs} epochs"
        f"{adapted}",
        soft_wrap=True,
    )


def _compare_finished(index: int, total: int, row: dict[str, Any], elapsed: float) -> None:
    left = elapsed / (index + 1) * (total - index - 1)
    if "error" in row:
        outcome = f"[red]failed[/red]: {row['error']}"
    else:
        outcome = (
            f"test {_pct(row['test_accuracy'])}, peak {_mib(row['peak'])}, {row['seconds']:.1f} s"
        )
    console.print(
        f"      {row['method']} done: {outcome}  [dim]({index + 1}/{total} methods, "
        f"{elapsed:.0f} s elapsed, about {left:.0f} s left)[/dim]",
        soft_wrap=True,
    )


def print_comparison(rows: list[dict[str, Any]], title: str) -> None:
    """Print ``compare`` rows as one table (what each row trained, its figures and ratios to
    baseline), then the stage each staged method was metered in, each adaptation and each
    failed method's full error on a line of its own. Nothing is cut: a console narrower than
    the table (or output to a file) gets the table at its full width."""
    table = Table(title=f"{title} (memory from smallfoot.memory)")
    for column in ("method", "model", "epochs", "test acc", "peak", "x base"):
        table.add_column(
            column, no_wrap=True, justify="left" if column in ("method", "model") else "right"
        )
    for column in ("saved act.", "x base", "seconds", "x base"):
        table.add_column(column, no_wrap=True, justify="right")
    for row in rows:
        if "error" in row:
            table.add_row(row.get("plan", row["method"]), "-", "-", "failed", *[""] * 6)
            continue
        table.add_row(
            row.get("plan", row["method"]) + ("*" if row.get("adapted") else ""),
            row["model"],
            str(row["epochs"]),
            _pct(row["test_accuracy"]),
            _mib(row["peak"]),
            _ratio(row.get("peak_ratio")),
            _mib(row["saved_activations"]),
            _ratio(row.get("saved_activations_ratio")),
            f"{row['seconds']:.1f}",
            _ratio(row.get("seconds_ratio")),
        )
    width = Console(width=500).measure(table).maximum
    wide = console if console.is_terminal and console.width >= width else Console(width=width)
    wide.print(table)
    for row in rows:
        if row.get("stage"):
            console.print(
                f"{row.get('plan', row['method'])}: memory of its {row['stage']} stage",
                soft_wrap=True,
            )
    for row in rows:
        for note in row.get("adapted") or []:
            console.print(f"* {row.get('plan', row['method'])}: {note}", soft_wrap=True)
    for row in rows:
        if "error" in row:
            console.print(
                f"[red]{row.get('plan', row['method'])} failed[/red]: {row['error']}",
                soft_wrap=True,
            )


def _ratio(value) -> str:
    return f"{value:.2f}" if value is not None else "-"


@app.command("filter")
def filter_command(
    dataset: str = typer.Option(..., help="Dataset name (see `smallfoot datasets`)."),
    k: str = typer.Option("5,10,20,42", "--k", help="Neighbourhood sizes, e.g. 5,10,42."),
    knn_chunk: int = typer.Option(
        6000,
        "--knn-chunk",
        help="Search neighbours within seeded random chunks of this many samples, as the "
        "thesis does (not a training batch size); 0: exact search over the whole set.",
    ),
    split: str = typer.Option("train", help="Dataset split."),
    train_limit: int | None = typer.Option(
        None, "--train-limit", help="Use this many samples of the split (seeded)."
    ),
    seed: int = typer.Option(0, help="Seed of the subset and of the k-NN chunks."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by k."),
):
    """Report the k-redundancy (fraction a k-filter removes) of a dataset for several k."""
    import time

    from smallfoot.data import load_dataset
    from smallfoot.data.filtering import k_redundancy

    ks = parse_positive_ints(k, "--k", "5,10,42")
    data = load_dataset(dataset, split, data_root, limit=train_limit, seed=seed)
    start = time.perf_counter()
    redundancy = k_redundancy(data.x, data.y, ks, batch_size=knn_chunk, seed=seed)
    seconds = time.perf_counter() - start
    report = {
        str(key): {
            "redundancy": value,
            "kept": len(data) - round(value * len(data)),
            "removed": round(value * len(data)),
            "total": len(data),
        }
        for key, value in redundancy.items()
    }
    if as_json:
        print_json(report)
        return
    search = f"chunks of {knn_chunk}" if knn_chunk else "exact"
    table = Table(title=f"k-redundancy of {dataset} ({split}, {len(data)} samples, {search} k-NN)")
    for column in ("k", "redundancy", "kept", "removed"):
        table.add_column(column, justify="right")
    for key, row in report.items():
        table.add_row(key, f"{100 * row['redundancy']:.1f}%", str(row["kept"]), str(row["removed"]))
    console.print(table)
    console.print(f"one k-NN search for all k: {seconds:.1f} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_run_flags
def fit(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="TOML run configuration; flags override it."
    ),
    widths: str | None = typer.Option(
        None, "--widths", help="Hidden layer widths, e.g. 784,392 (--model-opt widths=...)."
    ),
    out_dir: str | None = typer.Option(
        None, "--out-dir", help="Parent directory of run directories. [default: runs]"
    ),
    run_name: str | None = typer.Option(
        None, "--run-name", help="Name of the run directory. [default: <time>-<dataset>-...]"
    ),
    measure_memory: bool | None = typer.Option(
        None, "--memory/--no-memory", help="Record the fit's process peak. [default: memory]"
    ),
    run_flags: dict[str, Any] | None = None,
):
    """Fit an MLP in closed form (Platonic projections, no gradients): an alias of `smallfoot
    train --method closedform --model mlp` (the same flags and defaults, closed-form options as
    in `smallfoot methods closedform`, `--widths W` for `--model-opt widths=W`) that also
    prints each layer's fit; its run directory's model.pt initialises `train --init`."""
    from smallfoot.runner import run_training

    overrides = {**run_overrides(run_flags), "method": "closedform", "progress": False}
    overrides.setdefault("model", "mlp")
    if widths is not None:
        model_options = dict(overrides.get("model_options", {}))
        model_options["widths"] = parse_positive_ints(widths, "--widths", "784,392")
        overrides["model_options"] = model_options
    own = {"out_dir": out_dir, "run_name": run_name, "measure_memory": measure_memory}
    overrides |= {key: value for key, value in own.items() if value is not None}
    summary = run_training(build_run_config(ctx, config, overrides))
    table = Table(title=f"closed-form fit of {summary['dataset']} (per layer)")
    for column in ("layer", "width", "weights from", "LSD", "train error", "seconds"):
        table.add_column(column, justify="right")
    for layer in summary["fit"]["layers"]:
        table.add_row(
            str(layer["index"]),
            str(layer["width"]),
            layer["projection"],
            f"{layer['lsd']:.4g}",
            f"{layer['train_error']:.4g}",
            f"{layer['seconds']:.2f}",
        )
    console.print(table)
    print_summary(summary)
    memory = summary["memory"]
    console.print(f"process peak memory: {_mib(memory['process_peak'])} ({memory['source']})")
    console.print(f"fitted weights: {summary['model_file']}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def memory(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model name (see `smallfoot models`)."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Take the input shape and classes from this dataset."
    ),
    input_shape: str | None = typer.Option(
        None, "--input", help="Input shape CxHxW or D (without --dataset). [default: 3x32x32]"
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Batch size."),
    method: str = typer.Option("baseline", "--method", help="Method; its options as flags."),
    estimate: bool = typer.Option(False, "--estimate", help="Fake tensors: allocate nothing."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adamw."),
    classes: int | None = typer.Option(
        None, "--classes", help="Number of classes (without --dataset). [default: 10]"
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset directory."),
    data_opt: list[str] = typer.Option(
        [], "--data-opt", help="Dataset option KEY=VALUE, e.g. pad_to=32."
    ),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="Save the timeline plot (PNG)."),
    timeline: Path | None = typer.Option(None, "--timeline", help="Save the timeline JSON."),
):
    """Measure (or --estimate) the memory of one training step, by category."""
    import time

    from smallfoot.memory import plot_timeline, save_timeline
    from smallfoot.runner.step import method_step_memory

    shape, classes, streamed, _ = input_from_flags(
        dataset, data_root, data_opt, input_shape, classes
    )
    input_shape = "x".join(map(str, shape))
    for path, flag in ((plot, "--plot"), (timeline, "--timeline")):
        if path is not None:
            check_writable(path, flag)
    start = time.perf_counter()
    report = method_step_memory(
        model,
        parse_input_shape(input_shape),
        batch_size,
        method=method,
        method_options=method_options_from_flags(ctx, [method]),
        model_options=parse_key_values(model_opt, "--model-opt"),
        optimizer=optimizer,
        classes=classes,
        fake=estimate,
        streamed=streamed,
    )
    seconds = time.perf_counter() - start
    try:
        if plot is not None:
            plot_timeline(
                report, plot, title=f"{report.model} / {method}, batch {batch_size}, {input_shape}"
            )
        if timeline is not None:
            save_timeline(report, timeline)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {exc.filename}: {exc.strerror}; give another path"
        ) from None
    data = {"method": method, **report.to_dict(), "seconds": round(seconds, 2)}
    if as_json:
        print_json(data)
        return
    kind = "estimated on fake tensors" if estimate else "measured"
    stage = f", stage {report.stage}" if report.stage else ""
    table = Table(
        title=f"{report.model} / {method}{stage}: one training step, batch {report.batch}, {kind}"
    )
    for column, justify in (("category", "left"), ("bytes", "right"), ("MiB", "right")):
        table.add_column(column, justify=justify)
    for key in (
        "parameters", "buffers", "inputs", "gradients", "optimizer_state",
        "saved_activations", "temporaries", "peak",
    ):  # fmt: skip
        label = f"peak ({data['peak_phase']})" if key == "peak" else key.replace("_", " ")
        table.add_row(label, f"{data[key]:,}", f"{data[key] / 2**20:.2f}")
    console.print(table)
    pixel = data["per_pixel"]
    console.print(
        f"per input pixel: saved activations {pixel['saved_activations']:.1f} B, "
        f"activation gradients {pixel['activation_gradients']:.1f} B "
        f"({pixel['pixels']:,} pixels = batch x H x W); {seconds:.2f} s"
    )


# -- compress / decompress (issue 19): a self-contained block -------------------------------
@app.command()
def compress(
    run_dir: Path = typer.Argument(..., help="Run directory (with checkpoint.pt) to compress."),
    out: Path | None = typer.Option(
        None, "--out", help="Compressed file to write. [default: RUN_DIR/model.sfq]"
    ),
    c: int = typer.Option(6, "--c", help="Quantisation floor c: N = round(H) + c bits."),
    m: int = typer.Option(4, "--m", help="Bits M of the entropy estimate."),
    fraction: float = typer.Option(0.03, "--fraction", help="Share F of values sampled for H."),
    bits: int | None = typer.Option(None, "--bits", help="A fixed N for every layer instead."),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Test accuracy of the float32 and restored model."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Compress a run's trained model with the thesis' entropy-coded quantisation (ch. 3)."""
    from smallfoot.compress import CodecConfig
    from smallfoot.compress.checkpoint import compress_run, decompress, model_accuracy, run_config

    report = compress_run(run_dir, out, CodecConfig(c=c, m=m, fraction=fraction, bits=bits))
    if evaluate:
        config = run_config(report["path"])
        checkpoint = torch_load_model(run_dir / "checkpoint.pt")
        report["test_accuracy"] = model_accuracy(config, checkpoint)
        report["restored_test_accuracy"] = model_accuracy(config, decompress(report["path"]))
    if as_json:
        print_json(report)
        return
    print_compression(report, f"smallfoot compress {run_dir}")


@app.command()
def decompress(
    path: Path = typer.Argument(..., help="Compressed model file (from smallfoot compress)."),
    out: Path | None = typer.Option(
        None, "--out", help="State dict to write. [default: model.pt beside the file]"
    ),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Test accuracy of the restored model."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Restore a compressed model to a state dict (usable as `smallfoot train --init`)."""
    from smallfoot._io import save_checked
    from smallfoot.compress.checkpoint import decompress as restore
    from smallfoot.compress.checkpoint import model_accuracy, run_config

    state = restore(path)
    target = out if out is not None else path.with_name("model.pt")
    save_checked(state, target)
    report: dict[str, Any] = {"path": str(target), "tensors": len(state)}
    if evaluate:
        report["restored_test_accuracy"] = model_accuracy(run_config(path), state)
    if as_json:
        print_json(report)
        return
    print_compression(report, f"smallfoot decompress {path}")


def torch_load_model(path: Path) -> dict[str, Any]:
    """The model state dict of a verified ``checkpoint.pt``."""
    from smallfoot._io import load_checked

    return load_checked(path, "checkpoint")["model"]


def print_compression(report: dict[str, Any], title: str) -> None:
    """Print what compress/decompress measured as a two-column table."""
    table = Table(title=title, show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    if "values" in report:
        table.add_row("values (floating point)", f"{report['values']:,}")
        table.add_row(
            "size", f"{report['bytes']:,} bytes (float32: {report['float32_bytes']:,} bytes)"
        )
        table.add_row(
            "bits per parameter",
            f"{report['raw']:.2f} quantised (N), {report['coded']:.2f} entropy-coded, "
            f"{report['file']:.2f} whole file",
        )
    if "test_accuracy" in report:
        table.add_row("test accuracy (float32)", _pct(report["test_accuracy"]))
    if "restored_test_accuracy" in report:
        table.add_row("test accuracy (restored)", _pct(report["restored_test_accuracy"]))
    table.add_row("written", report["path"])
    console.print(table)


@app.command()
def bench(
    name: str | None = typer.Argument(None, help="Benchmark name; omit to list them."),
    quick: bool = typer.Option(False, "--quick", help="The minutes-long version."),
    results: Path = typer.Option(Path("results"), "--results", help="Results directory."),
    claims_only: bool = typer.Option(False, "--claims-only", help="Recompute the claims only."),
    reuse: bool = typer.Option(
        False,
        "--reuse",
        help="Keep the finished runs of an earlier, interrupted run of this benchmark (same "
        "commands) instead of training them again.",
    ),
):
    """Run a benchmark: writes results/NAME.json, NAME.md and plots (quick: NAME-quick.*)."""
    from smallfoot.bench import list_benchmarks, recompute_claims, run_benchmark

    if name is None:
        table = Table(title="benchmarks")
        table.add_column("name")
        table.add_column("description")
        for info in list_benchmarks():
            table.add_row(info.name, info.description)
        console.print(table)
        return
    if claims_only:
        document = recompute_claims(name, quick=quick, results_dir=results)
        met = sum(claim["met"] for claim in document["claims"])
        console.print(f"{len(document['claims'])} claims ({met} met) from the committed rows")
        return
    document = run_benchmark(name, quick=quick, results_dir=results, reuse=reuse)
    stem = f"{name}-quick" if quick else name
    console.print(f"{len(document['rows'])} rows in {document['seconds']} s: {results / stem}.md")


@app.command()
def claims(
    results: Path = typer.Option(Path("results"), "--results", help="Results directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Every claim of every committed benchmark result (results/*.json): met or not."""
    from smallfoot.claims import claims_summary, collect_claims

    collected = collect_claims(results)
    summary = claims_summary(collected)
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"claims in {results}/*.json")
    for column in ("id", "claim", "paper", "measured", "target", "met"):
        table.add_column(column, overflow="fold")
    for item in collected:
        table.add_row(*item.claim.display().values())
    console.print(table)
    console.print(f"{summary['met']} met, {summary['not_met']} not met")


@app.command()
def plan(
    model: str = typer.Option(..., "--model", help="Model name (see `smallfoot models`)."),
    budget: str = typer.Option(..., "--budget", help="Memory budget, e.g. 4GiB or 500MB."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Take the input shape and classes from this dataset."
    ),
    input_shape: str | None = typer.Option(
        None, "--input", help="Input shape CxHxW or D (without --dataset). [default: 3x32x32]"
    ),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch size."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (timing, --verify)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adamw."),
    classes: int | None = typer.Option(
        None, "--classes", help="Number of classes (without --dataset). [default: 10]"
    ),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset directory."),
    data_opt: list[str] = typer.Option(
        [], "--data-opt", help="Dataset option KEY=VALUE, e.g. pad_to=32 (with --dataset)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Run the chosen plan a few real steps; fail if the estimate was wrong.",
    ),
    train: bool = typer.Option(
        False, "--train", help="Then train the chosen plan (needs --dataset)."
    ),
    epochs: int = typer.Option(3, "--epochs", help="With --train: epochs."),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Reuse estimates and timings ($SMALLFOOT_CACHE)."
    ),
):
    """What fits a memory budget: every method configuration estimated, timed and ranked."""
    from smallfoot.plan import default_cache_path, format_bytes, verify_plan
    from smallfoot.plan import plan as make_plan

    if train and dataset is None:
        raise ConfigError("--train needs --dataset NAME (the data to train on)")
    shape, classes, streamed, data_options = input_from_flags(
        dataset, data_root, data_opt, input_shape, classes
    )
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown --device {device!r}; choose cpu or cuda")
    if device == "cuda" and not torch_cuda_available():
        raise ConfigError("--device cuda requested but CUDA is not available; use --device cpu")
    note = None if as_json else (lambda name: console.print(f"[dim]estimating {name}[/dim]"))
    result = make_plan(
        model,
        (batch_size, *shape),
        budget,
        classes=classes,
        optimizer=optimizer,
        device=device,
        cache=default_cache_path() if cache else None,
        progress=note,
        streamed=streamed,
    )
    chosen = result.chosen
    data = result.to_dict()
    checked = None
    if verify and chosen is not None:
        checked = verify_plan(
            chosen, model, shape, batch_size, result.budget,
            classes=classes, optimizer=optimizer, device=device, streamed=streamed,
        )  # fmt: skip
    if as_json:
        print_json({**data, **({"verify": checked} if checked is not None else {})})
    else:
        print_plan(result, dataset or "x".join(map(str, shape)))
        if checked is not None:
            console.print(
                f"verify: estimated {format_bytes(checked['estimated_peak'])}, real "
                f"{format_bytes(checked['real_peak'])} ({checked['source']}), "
                f"error {checked['error']:+.1%}; budget {format_bytes(checked['budget'])}: "
                + ("fits" if checked["fits"] else "does NOT fit")
            )
    if chosen is None:
        raise BudgetError(
            f"no candidate fits {format_bytes(result.budget)} for {model} at batch "
            f"{batch_size} (baseline {format_bytes(result.baseline_peak)}); give a "
            "larger --budget or a smaller --batch-size"
        )
    if train:
        from smallfoot.config import RunConfig
        from smallfoot.runner import run_training

        config = RunConfig(
            dataset=dataset,
            model=model,
            method=chosen.method,
            method_options=dict(chosen.options),
            batch_size=batch_size,
            epochs=epochs,
            optimizer=optimizer,
            data_root=data_root,
            data_options=data_options,
            device=device,
        )
        summary = run_training(config)
        print_summary(summary)
        peak = (summary.get("memory") or {}).get("peak")
        if peak is not None:
            verdict = "within" if peak <= result.budget else "OVER"
            console.print(
                f"budget {format_bytes(result.budget)}: {chosen.name} measured "
                f"{format_bytes(peak)} ({verdict} the budget); plain backprop needs "
                f"{format_bytes(result.baseline_peak)} (estimated)",
                soft_wrap=True,
            )


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def print_plan(result, where: str) -> None:
    """Print a :class:`smallfoot.plan.Plan` (at the table's full width): the candidates that
    fit, ranked, then why each other one does not."""
    from smallfoot.plan import format_bytes

    title = (
        f"plan: {result.model}, {where}, batch {result.batch}, budget "
        f"{format_bytes(result.budget)} (baseline {format_bytes(result.baseline_peak)}), "
        f"{result.seconds:.1f} s"
    )
    table = Table(title=title)
    for column in ("#", "candidate", "est. peak", "overhead", "s/step", "accuracy evidence"):
        table.add_column(column)
    fits = [c for c in result.candidates if c.fits]
    for rank, c in enumerate(fits, start=1):
        overhead = f"{c.time_overhead:+.0%}" if c.time_overhead is not None else "-"
        seconds = f"{c.seconds_per_step:.2f}" if c.seconds_per_step is not None else "-"
        table.add_row(
            str(rank), c.name, format_bytes(c.estimated_peak), overhead, seconds,
            _evidence_text(c.accuracy_evidence, c.methods),
        )  # fmt: skip
    width = Console(width=500).measure(table).maximum
    wide = console if console.is_terminal and console.width >= width else Console(width=width)
    wide.print(table)
    others = [c for c in result.candidates if not c.fits]
    if others:
        wide.print("does not fit:")
        for c in others:
            wide.print(f"  {c.name}: {c.reason}")
    console.print(f"[dim]{result.timing}[/dim]")
    if result.chosen is not None:
        wide.print(f"chosen: {result.chosen.name} ({result.chosen.command_flags()})")


def _evidence_text(evidence: list[dict[str, Any]], methods: list[str]) -> str:
    """The evidence column of a plan: each item's summary or claim; a composition's items
    name the method they are about."""
    parts = []
    for item in evidence:
        if "construction" in item:
            text = item["summary"]
        else:
            met = "met" if item["met"] else "not met"
            where = f", {'/'.join(item['datasets'])}" if item["datasets"] else ""
            figure = f"{item['measured']:.3g} {item['unit']}".strip()
            text = f"{item['claim']} {figure} ({met}{where})"
        parts.append(f"{item['method']}: {text}" if len(methods) > 1 else text)
    return "; ".join(parts) or "-"


def main() -> None:
    """Entry point: run the app; user errors print one line and exit with status 2."""
    try:
        app()
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    except SmallfootError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on standard output (no rich markup)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


if __name__ == "__main__":
    main()
