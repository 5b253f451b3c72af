"""The image-folder dataset: a class-per-folder tree of PNGs read with Pillow, on demand."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smallfoot.data import load_dataset
from smallfoot.data.folder import ImageFiles
from smallfoot.errors import DatasetError


def write_tree(root, per_class=(40, 12), classes=3, size=8):
    """Digits of ``classes`` classes as grey PNGs under root/{train,test}/<class>/."""
    digits = load_dataset("digits", "train", normalize=False)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            of_class = digits.x[digits.y == label]
            images = of_class[:count] if split == "train" else of_class[-count:]
            for index, image in enumerate(images):
                pixels = (image[0] / image.max() * 255).round().to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").resize((size, size)).save(folder / f"{index}.png")
    return root


def test_reads_the_tree_lazily_with_class_names(tmp_path):
    root = write_tree(tmp_path)
    train = load_dataset("image-folder", "train", tmp_path, channels=1, size=8)
    test = load_dataset("image-folder", "test", root, channels=1, size=8)
    assert isinstance(train.x, ImageFiles) and len(train) == 120 and len(test) == 36
    assert train.input_shape == (1, 8, 8) and train.num_classes == 3
    assert train.classes == ("class0", "class1", "class2")
    batch = train.x[torch.tensor([0, 5, 119])]
    assert batch.shape == (3, 1, 8, 8) and batch.dtype == torch.float32
    everything = load_dataset("image-folder", "train", root, channels=1, size=8, in_memory=True)
    assert torch.equal(everything.x[torch.tensor([0, 5, 119])], batch)
    # the normalisation statistics come from training images: about zero mean there
    assert abs(float(everything.x.mean())) < 0.05


def test_rgb_and_resize(tmp_path):
    write_tree(tmp_path, per_class=(4, 2), classes=2)
    data = load_dataset("image-folder", "train", tmp_path, size=16)
    assert data.x[:2].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("fault", ["corrupt", "empty", "not-an-image"])
def test_bad_trees_name_the_file(tmp_path, fault):
    write_tree(tmp_path, per_class=(3, 2), classes=2)
    if fault == "corrupt":
        bad = tmp_path / "train" / "class1" / "1.png"
        bad.write_bytes(bad.read_bytes()[:20])
        data = load_dataset("image-folder", "train", tmp_path, channels=1, size=8, normalize=False)
        with pytest.raises(DatasetError, match="1.png: cannot read the image"):
            data.x[:]
        return
    if fault == "empty":
        bad = tmp_path / "train" / "class9"
        bad.mkdir()
        message = "class9 is an empty class folder"
    else:
        bad = tmp_path / "train" / "class0" / "notes.txt"
        bad.write_text("x")
        message = "notes.txt is not an image"
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset("image-folder", "train", tmp_path, channels=1, size=8)
    assert "\n" not in str(error.value)


def test_test_classes_must_match_training(tmp_path):
    write_tree(tmp_path, per_class=(3, 2), classes=2)
    (tmp_path / "test" / "class1").rename(tmp_path / "test" / "other")
    with pytest.raises(DatasetError, match="same class folders"):
        load_dataset("image-folder", "test", tmp_path, channels=1, size=8)


def test_needs_a_root(run_cli):
    code, _, err = run_cli("train", "--dataset", "image-folder")
    assert code == 2 and "--data-root DIR" in err


@pytest.mark.slow
def test_trains_from_the_folder_as_from_memory(tmp_path, run_cli):
    """The same run from files read per batch and from the decoded tensor: equal accuracy."""
    write_tree(tmp_path / "tree")
    results = []
    for in_memory in ("false", "true"):
        name = f"memory-{in_memory}"
        code, _, err = run_cli(
            "train", "--dataset", "image-folder", "--data-root", str(tmp_path / "tree"),
            "--data-opt", "channels=1", "--data-opt", "size=8", "--data-opt",
            f"in_memory={in_memory}", "--model", "cnn4", "--epochs", "2", "--batch-size", "16",
            "--lr", "0.05", "--no-progress", "--out-dir", str(tmp_path), "--run-name", name,
        )  # fmt: skip
        assert code == 0, err
        results.append(json.loads((tmp_path / name / "summary.json").read_text()))
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"] > 0.6
    assert np.isclose(results[0]["test_loss"], results[1]["test_loss"])
