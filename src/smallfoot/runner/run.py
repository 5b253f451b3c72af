"""``run_training(config)``: data, method, model, trainer and the run directory, end to end."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smallfoot._io import atomic_write_json, load_checked
from smallfoot.config import RunConfig, apply_overrides, load_config, save_config
from smallfoot.data import ArrayDataset, StreamDataset, add_label_noise, load_dataset
from smallfoot.data.filtering import FilterSpec, apply_filter
from smallfoot.errors import ConfigError, DatasetError
from smallfoot.methods import Method, RunContext, get_method
from smallfoot.models import parameter_count


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; explicit names are checked."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return name


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_run_data(
    config: RunConfig,
) -> tuple[ArrayDataset | StreamDataset, ArrayDataset | StreamDataset, dict[str, Any]]:
    """Training and test sets of a run (limits, label noise and filtering applied) + a record."""
    options = dict(config.data_options)
    train = load_dataset(
        config.dataset,
        "train",
        config.data_root,
        limit=config.train_limit,
        seed=config.seed,
        **options,
    )
    test = load_dataset(
        config.dataset,
        "test",
        config.data_root,
        limit=config.test_limit,
        seed=config.seed,
        **options,
    )
    if train.input_shape != test.input_shape or train.num_classes != test.num_classes:
        raise DatasetError(
            f"{config.dataset}: the training split has inputs {train.input_shape} and "
            f"{train.num_classes} classes but the test split {test.input_shape} and "
            f"{test.num_classes}; both splits must come from the same dataset files"
        )
    if len(train) == 0 or len(test) == 0:
        raise DatasetError(
            f"{config.dataset}: {len(train)} training and {len(test)} test samples; "
            "both splits need at least one"
        )
    if isinstance(train, StreamDataset) and (config.label_noise or config.filter):
        flag = f"--filter {config.filter}" if config.filter else "--label-noise"
        raise ConfigError(
            f"--dataset {config.dataset} streams its training set (in_memory=false), and "
            f"{flag} needs random access to it; drop {flag}, or drop in_memory=false"
        )
    record: dict[str, Any] = {}
    if config.label_noise:
        train = add_label_noise(train, config.label_noise, config.seed)
        record["label_noise"] = config.label_noise
    spec = FilterSpec.parse(config.filter) if config.filter else None
    if spec is not None and spec.online:
        record["filter"] = {"online": config.filter}
    elif spec is not None:
        before = len(train)
        train, record["filter"] = apply_filter(train, spec)
        record["filter"].setdefault("kept", len(train))
        record["filter"].setdefault("total", before)
    return train, test, record


def check_online_filter(method: Method, config: RunConfig) -> None:
    """Refuse an online ``--filter`` for a method that does not train through the Trainer's
    epochs (``Method.online_filters``), naming the offline alternative."""
    if not config.filter:
        return
    spec = FilterSpec.parse(config.filter)
    if spec.online and spec.start > config.epochs:
        raise ConfigError(
            f"--filter {config.filter} first filters at epoch {spec.start}, after the last of "
            f"--epochs {config.epochs}; lower from= or raise --epochs"
        )
    if spec.online and not method.online_filters:
        offline = ",".join(
            part.strip()
            for part in config.filter.split(",")
            if part.split("=")[0].strip() in ("k", "cap", "knn_chunk", "seed")
        )
        fix = f"filter offline (--filter {offline})" if spec.k is not None else "drop --filter"
        raise ConfigError(
            f"--filter {config.filter} filters between the Trainer's epochs, but --method "
            f"{config.method} trains with its own loop; {fix}"
        )


def check_streams(method: Method, config: RunConfig, datasets: tuple[Any, Any]) -> None:
    """Refuse a streamed dataset (``in_memory=false`` on a user's ``IterableDataset``) for a
    method that reads its data other than through the Trainer's epochs (``Method.streams``)."""
    if method.streams or not any(isinstance(d, StreamDataset) for d in datasets):
        return
    raise ConfigError(
        f"--method {config.method} reads its data its own way (random access or several "
        f"passes in a fixed order), and --dataset {config.dataset} is a stream "
        "(in_memory=false); drop in_memory=false to read it into memory, or return a "
        "map-style Dataset"
    )


RESUME_OVERRIDES = ("epochs", "lr", "data_root", "workers", "device", "progress", "measure_memory")
"""The fields ``--resume`` may change: more epochs, a new learning rate (applied to the
optimizer's parameter groups), where the data lives, the device, and what is shown/measured."""


def _make_dir(path: Path, exist_ok: bool) -> bool:
    """``mkdir`` with errors a user can fix turned into ``ConfigError``; False if it exists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(exist_ok=exist_ok)
    except FileExistsError:
        if path.is_dir():
            return False
        raise ConfigError(f"{path} exists and is a file; choose another --out-dir") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run directory {path} ({exc.strerror}); choose another --out-dir"
        ) from None
    return True


def new_run_dir(config: RunConfig) -> Path:
    """A fresh directory ``out_dir/<time>-<dataset>-<model>-<method>`` (``-2``, ``-3``, ...
    appended when runs start in the same second), or ``out_dir/<run_name>``.

    Created with ``mkdir`` (which fails if the directory exists), so concurrent runs never
    share a directory."""
    if config.run_name:
        path = Path(config.out_dir) / config.run_name
        _make_dir(path, exist_ok=True)
        if any(path.iterdir()):
            raise ConfigError(
                f"run directory {path} exists and is not empty; choose another --run-name "
                f"or use --resume {path}"
            )
        return path
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = Path(config.out_dir) / f"{stamp}-{config.dataset}-{config.model}-{config.method}"
    path, number = stem, 1
    while not _make_dir(path, exist_ok=False):
        number += 1
        path = stem.with_name(f"{stem.name}-{number}")
    return path


_FLAGS = {
    "model_options": "--model-opt",
    "data_options": "--data-opt",
    "loss_options": "the loss options",
    "method_options": "the method options",
    "measure_memory": "--memory",
    "config": "--config",
}


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config saved in ``run_dir/config.toml`` with ``overrides`` applied; only the
    fields in :data:`RESUME_OVERRIDES` may be overridden (others raise ``ConfigError``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise ConfigError(
            f"--resume {run_dir} {what}; give the run directory that `smallfoot train` printed"
        )
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(
            f"--resume {run_dir} is not a run directory (no config.toml); give the run "
            "directory that `smallfoot train` printed"
        )
    overrides = dict(overrides or {})
    refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if refused:
        flags = ", ".join(_FLAGS.get(name, "--" + name.replace("_", "-")) for name in refused)
        raise ConfigError(
            f"--resume continues the run as saved and cannot change {flags}; it takes only "
            "--epochs, --lr, --data-root, --device, --progress/--no-progress and "
            "--memory/--no-memory"
        )
    if overrides.get("data_root") is not None:
        overrides["data_root"] = str(Path(overrides["data_root"]).resolve())
    return apply_overrides(load_config(run_dir / "config.toml"), overrides)


def _absolute_paths(config: RunConfig) -> RunConfig:
    """``data_root`` and ``init`` made absolute, so the saved run resumes from anywhere."""
    return dataclasses.replace(
        config,
        data_root=str(Path(config.data_root).resolve()) if config.data_root else None,
        init=str(Path(config.init).resolve()) if config.init else None,
    )


def check_init_file(path: str) -> None:
    """Refuse (``ConfigError``) an ``--init`` file that is not a readable state dict."""
    state = load_checked(path, "--init file", require_checksum=False)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"--init file {path} holds no state dict (names -> tensors); give a model.pt or "
            "checkpoint.pt written by smallfoot"
        )


def run_summary(
    config: RunConfig,
    model_name: str,
    datasets: tuple[Any, Any],
    metrics: dict[str, Any],
    epochs: int,
    seconds: float,
    model: torch.nn.Module,
    device: str,
    run_dir: Path,
    *,
    resumed: bool = False,
    data_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields every run's ``summary.json`` holds: what trained (dataset, the model that
    actually trained, method), on how many (train, test) samples, for how many epochs, its
    final accuracies (fractions) and test loss, wall ``seconds``, parameters, device and run
    directory."""
    train_set, test_set = datasets
    return {
        "dataset": config.dataset,
        "model": model_name,
        "method": config.method,
        "train_samples": len(train_set),
        "test_samples": len(test_set),
        "epochs": epochs,
        "train_accuracy": metrics.get("train_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "seconds": seconds,
        "parameters": parameter_count(model),
        "device": device,
        "run_dir": str(run_dir),
        **({"resumed": True} if resumed else {}),
        **({"data": data_record} if data_record else {}),
    }


def run_training(
    config: RunConfig,
    resume_dir: str | Path | None = None,
    resume_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train as ``config`` says (or resume the run in ``resume_dir``); write and return the summary.

    The run directory holds ``config.toml`` (the resolved config, paths made absolute:
    ``smallfoot train --config runs/<id>/config.toml`` repeats the run), ``metrics.jsonl``,
    ``checkpoint.pt`` (+ ``checkpoint.pt.sha256``) and ``summary.json``. When resuming,
    ``config`` is ignored: the run's own ``config.toml`` with ``resume_overrides`` (see
    :func:`resume_config`) is used; a run interrupted before its first checkpoint starts
    again from epoch 1 in the same directory.
    """

    if resume_dir is not None:
        run_dir = Path(resume_dir)
        config = resume_config(run_dir, resume_overrides).validate()
        if resume_overrides:
            save_config(config, run_dir / "config.toml")
    else:
        config = _absolute_paths(config).validate()
    method = get_method(config.method, config.method_options)
    device = resolve_device(config.device)
    if config.init:
        check_init_file(config.init)
    seed_everything(config.seed)
    train_set, test_set, data_record = load_run_data(config)
    # a run the method cannot honour is refused before its directory exists
    check_online_filter(method, config)
    check_streams(method, config, (train_set, test_set))
    method.check_run(RunContext(config, method.options, train_set, test_set, None, device))
    if resume_dir is None:
        run_dir = new_run_dir(config)
        save_config(config, run_dir / "config.toml")
    if data_record:
        atomic_write_json(run_dir / "data.json", data_record)
    seed_everything(config.seed)
    # a run stopped before its first checkpoint has nothing to restore: it starts again
    resume = resume_dir is not None and any(run_dir.rglob("checkpoint.pt"))
    ctx = RunContext(config, method.options, train_set, test_set, run_dir, device, resume=resume)
    start = time.perf_counter()
    outcome = method.train(ctx)
    seconds = time.perf_counter() - start
    summary = {
        **run_summary(
            config,
            method.model_name(ctx),
            (train_set, test_set),
            outcome.metrics,
            len(outcome.history) if outcome.history else config.epochs,
            seconds,
            outcome.model,
            device,
            run_dir,
            resumed=resume,
            data_record=data_record,
        ),
        **({"memory": outcome.memory} if outcome.memory is not None else {}),
        **outcome.extra,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
