"""Benchmark ``datapath``: is the loader the bottleneck when the data is on disk?

Fashion-MNIST is written out as a class-per-folder tree of PNGs (the layout ``--dataset
image-folder`` reads), then:

* **the data path alone**: images/s of one epoch of ``BatchLoader`` batches (batch 128) from
  the in-memory tensor and from the PNG folder with 0, 1 and 2 worker processes, nothing
  trained;
* **the same run from memory and from the folder**: ``smallfoot train`` (cnn4, 2 epochs) on
  ``fashion-mnist`` and on the PNG tree with ``--workers`` 0, 1 and 2, each row with its
  command: test accuracy and the seconds per training epoch side by side.

Training's own images/s is the in-memory run's (its loader costs an index copy), so a data
path is not the bottleneck when it delivers more images per second than that.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.bench.grid import RUNS_ROOT, GridRow, run_grid
from smallfoot.config import RunConfig
from smallfoot.data import BatchLoader, load_dataset
from smallfoot.train.rundir import MetricsLog

WORKERS = (0, 1, 2)
BATCH = 128


def write_png_tree(root: Path, limits: dict[str, int | None]) -> dict[str, Any]:
    """Write Fashion-MNIST's splits as ``root/<split>/<class>/<index>.png`` (8-bit grey, the
    dataset's own pixels; ``limits`` per split: the seeded choice ``--train-limit`` makes) and
    return the image count and the seconds it took. An existing complete tree is reused."""
    from PIL import Image

    done = root / "complete"
    if done.exists():
        return {"images": int(done.read_text()), "write_seconds": None}
    start, count = time.perf_counter(), 0
    for split, limit in limits.items():
        data = load_dataset("fashion-mnist", split, normalize=False, limit=limit, seed=0)
        pixels = (data.x[:, 0] * 255).round().to(torch.uint8).numpy()  # (N, 28, 28)
        for index, (image, label) in enumerate(zip(pixels, data.y.tolist(), strict=True)):
            folder = root / split / data.classes[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image), mode="L").save(folder / f"{index}.png")
            count += 1
    done.write_text(str(count))
    return {"images": count, "write_seconds": round(time.perf_counter() - start, 1)}


def loader_rows(root: Path, limit: int | None) -> list[dict[str, Any]]:
    """Images/s of one epoch of batches alone: in memory, then the PNG folder per worker count."""
    section = f"the data path alone: one epoch of batches of {BATCH}, nothing trained"
    sources = [
        ("in memory (fashion-mnist)", load_dataset("fashion-mnist", "train", limit=limit), 0)
    ]
    folder = load_dataset("image-folder", "train", root, size=28, channels=1)
    sources += [(f"PNG folder, {w} workers", folder, w) for w in WORKERS]
    rows = []
    for label, data, workers in sources:
        loader = BatchLoader(data, BATCH, seed=0, workers=workers)
        start = time.perf_counter()
        images = sum(len(y) for _, y in loader.epoch(0))
        seconds = time.perf_counter() - start
        rows.append({
            "section": section, "source": label, "workers": workers, "images": images,
            "seconds": round(seconds, 2), "images_per_s": round(images / seconds),
        })  # fmt: skip
        print(f"datapath bench: {label}: {images / seconds:,.0f} images/s", flush=True)
    return rows


FOLDER_IN_MEMORY = "PNG folder decoded into memory"


def run_rows(root: Path, quick: bool, limits: dict[str, int | None]) -> list[dict[str, Any]]:
    """``smallfoot train`` cnn4 on the in-memory set, on the PNG folder decoded into memory
    and on the PNG folder read batch by batch per worker count."""
    base = RunConfig(
        model="cnn4", epochs=1 if quick else 2, batch_size=BATCH, device="cpu",
        measure_memory=False,
    )  # fmt: skip
    memory = replace(
        base, dataset="fashion-mnist", train_limit=limits["train"], test_limit=limits["test"]
    )
    grid = [
        GridRow("in memory", memory, extra={"source": "in memory (fashion-mnist)", "workers": 0})
    ]
    # the same folder decoded once into memory: the reference the folder runs must equal
    # (the IDX set above orders its samples and normalises differently)
    decoded = replace(
        base, dataset="image-folder", data_root=str(root),
        data_options={"size": 28, "channels": 1, "in_memory": True},
    )  # fmt: skip
    extra = {"source": FOLDER_IN_MEMORY, "workers": 0}
    grid.append(GridRow("PNG folder in memory", decoded, extra=extra))
    for workers in WORKERS:
        folder = replace(
            base, dataset="image-folder", data_root=str(root),
            data_options={"size": 28, "channels": 1}, workers=workers,
        )  # fmt: skip
        extra = {"source": f"PNG folder, {workers} workers", "workers": workers}
        grid.append(GridRow(f"PNG folder {workers} workers", folder, extra=extra))
    rows = []
    section = "the same run from memory and from the PNG folder (smallfoot train)"
    for record in run_grid(grid, "datapath", quick=quick):
        if "error" in record:
            rows.append({"section": section, "source": record["source"],
                         "error": record["error"], "command": record["command"]})  # fmt: skip
            continue
        epoch_seconds = [line["seconds"] for line in MetricsLog(record["run_dir"]).read()]
        images = record["train_samples"]
        rows.append({
            "section": section, "source": record["source"], "workers": record["workers"],
            "test_accuracy_pct": round(100 * record["test_accuracy"], 2),
            "seconds_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 1),
            "train_images_per_s": round(images / (sum(epoch_seconds) / len(epoch_seconds))),
            "command": record["command"],
        })  # fmt: skip
    return rows


@register_benchmark("datapath", "Images from disk: loader images/s with 0-2 workers vs training")
def datapath_benchmark(quick: bool, out_dir: Path) -> BenchResult:
    """Full Fashion-MNIST (quick: 2,000 / 500 images) as PNGs: the loader alone and
    ``smallfoot train`` cnn4 from memory and from the folder with 0, 1 and 2 workers."""
    limits = {"train": 2000, "test": 500} if quick else {"train": None, "test": None}
    root = RUNS_ROOT / ("datapath-quick" if quick else "datapath") / "fashion-mnist-png"
    written = write_png_tree(root, limits)
    rows = loader_rows(root, limits["train"]) + run_rows(root, quick, limits)
    cores = torch.get_num_threads()
    notes = (
        f"{written['images']:,} Fashion-MNIST images as 28x28 8-bit PNGs"
        + (f" (written in {written['write_seconds']} s)" if written["write_seconds"] else "")
        + f"; batch {BATCH}; torch threads in the training process: {cores}. The folder is "
        "read by `--dataset image-folder` (Pillow decodes each batch's files; normalised with "
        "the mean and std of 1,000 training images, where the IDX set in memory uses the whole "
        "split's, and its samples come in class-folder order, so the IDX run's accuracy "
        "differs slightly; the folder decoded into memory, `--data-opt in_memory=true`, is "
        "the like-for-like reference). Worker processes share the machine's cores with the "
        "training step."
    )
    return BenchResult(rows=rows, notes=notes)


@register_claims("datapath")
def datapath_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """Issue 23's requirements of a data path on disk: the loader (its best worker count)
    outruns cnn4's training, and the folder runs give the in-memory run's accuracy (the same
    for every worker count)."""
    loaders = [r for r in rows if "images_per_s" in r and r["source"].startswith("PNG")]
    runs = [r for r in rows if "test_accuracy_pct" in r]
    memory = [r for r in runs if r["source"].startswith("in memory")]
    decoded = [r for r in runs if r["source"] == FOLDER_IN_MEMORY]
    if not loaders or not memory or not decoded:
        return []
    best = max(loaders, key=lambda r: r["images_per_s"])
    folder = [r for r in runs if r["source"].startswith("PNG folder,")]
    accuracies = sorted({r["test_accuracy_pct"] for r in folder})
    reference = decoded[0]["test_accuracy_pct"]
    worst = max(folder, key=lambda r: abs(r["test_accuracy_pct"] - reference))
    return [
        Claim(
            "datapath.loader_outruns_training",
            f"Reading Fashion-MNIST from PNG files ({best['workers']} workers, the fastest: "
            f"{best['images_per_s']:,} images/s) delivers images faster than cnn4 trains on them "
            f"from memory ({memory[0]['train_images_per_s']:,} images/s); measured: the ratio.",
            "issue 23: with data on disk the loader must not be the bottleneck of our models",
            round(best["images_per_s"] / memory[0]["train_images_per_s"], 2),
            ">=",
            1.0,
            seeds=1,
            command=command,
            unit="x",
        ),  # fmt: skip
        Claim(
            "datapath.folder_accuracy",
            f"cnn4 trained from the PNG folder read batch by batch from disk reaches exactly the "
            f"test accuracy of the same folder decoded into memory ({reference} %); measured: "
            f"the largest difference (the IDX set in memory, {memory[0]['test_accuracy_pct']} "
            "%, orders its samples and normalises with the whole split's statistics, the folder "
            "with 1,000 images').",
            "issue 23: the same run from an in-memory dataset and from the folder, accuracy equal",
            round(abs(worst["test_accuracy_pct"] - reference), 2),
            "<=",
            0.0,
            seeds=1,
            command=command,
            unit="points",
        ),
        Claim(
            "datapath.workers_same_result",
            f"The folder runs with {', '.join(str(r['workers']) for r in folder)} workers train "
            f"to the same test accuracy ({', '.join(map(str, accuracies))} %): worker processes "
            "change the speed, not the result; measured: the spread.",
            "issue 23: DataLoader workers are a speed option",
            round(max(accuracies) - min(accuracies), 2),
            "<=",
            0.0,
            seeds=1,
            command=command,
            unit="points",
        ),
    ]
