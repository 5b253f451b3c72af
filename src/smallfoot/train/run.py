"""``run_training(config)``: data, method, model, trainer and the run directory, end to end."""

from __future__ import annotations

import datetime as _dt
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smallfoot._io import atomic_write_json
from smallfoot.config import RunConfig, load_config, save_config
from smallfoot.data import ArrayDataset, add_label_noise, load_dataset
from smallfoot.errors import ConfigError
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


def load_run_data(config: RunConfig) -> tuple[ArrayDataset, ArrayDataset, dict[str, Any]]:
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
    record: dict[str, Any] = {}
    if config.label_noise:
        train = add_label_noise(train, config.label_noise, config.seed)
        record["label_noise"] = config.label_noise
    if config.filter:
        from smallfoot.data.filtering import apply_filter

        before = len(train)
        train, record["filter"] = apply_filter(train, config.filter)
        record["filter"].setdefault("kept", len(train))
        record["filter"].setdefault("total", before)
    return train, test, record


def new_run_dir(config: RunConfig) -> Path:
    """A fresh directory ``out_dir/<time>-<dataset>-<model>-<method>`` (or ``run_name``)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.run_name or f"{stamp}-{config.dataset}-{config.model}-{config.method}"
    path = Path(config.out_dir) / name
    if path.exists() and any(path.iterdir()):
        raise ConfigError(
            f"run directory {path} exists and is not empty; choose another --run-name or use --resume {path}"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_training(config: RunConfig, resume_dir: str | Path | None = None) -> dict[str, Any]:
    """Train as ``config`` says (or resume the run in ``resume_dir``); write and return the summary.

    The run directory holds ``config.toml`` (the resolved config: ``smallfoot train --config
    runs/<id>/config.toml`` repeats the run), ``metrics.jsonl``, ``checkpoint.pt`` and
    ``summary.json``.
    """
    from smallfoot.methods import RunContext, get_method

    if resume_dir is not None:
        run_dir = Path(resume_dir)
        config = load_config(run_dir / "config.toml")
    config.validate()
    method = get_method(config.method, config.method_options)
    device = resolve_device(config.device)
    seed_everything(config.seed)
    train_set, test_set, data_record = load_run_data(config)
    if resume_dir is None:
        run_dir = new_run_dir(config)
        save_config(config, run_dir / "config.toml")
    if data_record:
        atomic_write_json(run_dir / "data.json", data_record)
    seed_everything(config.seed)
    ctx = RunContext(
        config, method.options, train_set, test_set, run_dir, device, resume=resume_dir is not None
    )
    method.check_run(ctx)
    start = time.perf_counter()
    outcome = method.train(ctx)
    seconds = time.perf_counter() - start
    summary = {
        "dataset": config.dataset,
        "model": method.model_name(ctx),
        "method": config.method,
        "train_samples": len(train_set),
        "test_samples": len(test_set),
        "epochs": len(outcome.history) if outcome.history else config.epochs,
        "train_accuracy": outcome.metrics.get("train_accuracy"),
        "test_accuracy": outcome.metrics.get("test_accuracy"),
        "test_loss": outcome.metrics.get("test_loss"),
        "seconds": seconds,
        "parameters": parameter_count(outcome.model),
        "device": device,
        "run_dir": str(run_dir),
        **({"resumed": True} if resume_dir is not None else {}),
        **({"data": data_record} if data_record else {}),
        **({"memory": outcome.memory} if outcome.memory is not None else {}),
        **outcome.extra,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary
