import json
import sys

import pytest

from smallfoot import cli
from smallfoot.errors import ConfigError


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--model", "alexnet", "--dataset", "digits"],
            "unknown model 'alexnet'; choose one of: ",
        ),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--epochs", "0"], "epochs must be a positive integer"),
        (["train", "--optimizer", "adam"], "choose one of: sgd, adamw"),
        (["train", "--nproc", "0"], "--nproc must be a positive integer"),
        (["train", "--sync", "average"], "--sync and --sync-every need --nproc 2 or more"),
        (
            ["train", "--dataset", "digits", "--bogus", "3"],
            "no such option --bogus (flags: `smallfoot train --help`; method options: none, see "
            "`smallfoot methods baseline`)",
        ),
        (["train", "--model-opt", "widths"], "KEY=VALUE"),
        (["train", "--config", "missing.toml"], "not found"),
        (["models", "--input", "3by32"], "CxHxW"),
    ],
)
def test_user_errors_are_one_line_exit_2(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_typer_usage_error_is_exit_2(run_cli):
    code, _, _ = run_cli("train", "--epochs", "three")
    assert code == 2


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == "smallfoot 0.1.0"


def test_train_with_config_and_overrides(run_cli, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'dataset = "digits"\nmodel = "mlp"\nepochs = 5\n[model_options]\nwidths = [32]\n'
    )
    code, out, err = run_cli(
        "train",
        "--config",
        str(config),
        "--epochs",
        "2",
        "--no-progress",
        "--no-memory",
        "--out-dir",
        str(tmp_path),
        "--run-name",
        "r",
        "--model-opt",
        "widths=16",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["dataset"] == "digits"
    saved = (tmp_path / "r" / "config.toml").read_text()
    assert "epochs = 2" in saved and "widths = 16" in saved
    assert "test accuracy" in out


def test_listing_commands(run_cli):
    for command, expected in (
        ("models", "resnet20"),
        ("datasets", "fashion-mnist"),
        ("methods", "baseline"),
    ):
        code, out, _ = run_cli(command)
        assert code == 0 and expected in out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch run directory (synthetic data, tiny mlp) written through the CLI."""
    root = tmp_path_factory.mktemp("runs")
    args = [
        "train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "1",
        "--data-opt", "shape=4", "--data-opt", "size=32", "--model-opt", "widths=8",
        "--no-progress", "--no-memory", "--out-dir", str(root), "--run-name", "run",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["smallfoot", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    assert not exit_.value.code
    return root / "run"


def copy_run(run, tmp_path, damage=None):
    """A copy of ``run`` whose checkpoint.pt bytes are replaced by ``damage(bytes)``."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    if damage is not None:
        path = copy / "checkpoint.pt"
        path.write_bytes(damage(path.read_bytes()))
    return copy


def flip_1000_bytes(data: bytes) -> bytes:
    middle = len(data) // 2
    return (
        data[:middle]
        + bytes(b ^ 0x5A for b in data[middle : middle + 1000])
        + data[middle + 1000 :]
    )


def mismatched_mnist(root):
    import numpy as np

    from smallfoot.data.idx import write_idx

    rng = np.random.default_rng(0)
    for prefix, n, side in (("train", 20, 28), ("t10k", 10, 20)):
        write_idx(
            root / f"{prefix}-images-idx3-ubyte",
            rng.integers(0, 255, (n, side, side), dtype=np.uint8),
        )
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return root


TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--no-progress", "--no-memory"]


def bad_input_cases():
    """(id, args(tmp_path, run) -> argv, message) for every bad input of issue 16, section 4."""
    return [
        ("config-is-dir", lambda t, r: ["train", "--config", str(t)], "is a directory"),
        (
            "resume-truncated",
            lambda t, r: ["train", "--resume", str(copy_run(r, t, lambda d: d[: len(d) // 2]))],
            "does not match its checksum",
        ),
        (
            "resume-empty",
            lambda t, r: ["train", "--resume", str(copy_run(r, t, lambda d: b""))],
            "is empty",
        ),
        (
            "resume-flipped-bytes",
            lambda t, r: ["train", "--resume", str(copy_run(r, t, flip_1000_bytes))],
            "does not match its checksum",
        ),
        (
            "resume-a-file",
            lambda t, r: ["train", "--resume", str(r / "config.toml")],
            "is a file; give the run directory",
        ),
        (
            "out-dir-is-a-file",
            lambda t, r: ["train", *TINY, "--out-dir", str(r / "config.toml")],
            "choose another --out-dir",
        ),
        (
            "out-dir-unwritable",
            lambda t, r: ["train", *TINY, "--out-dir", str(r / "config.toml" / "sub")],
            "choose another --out-dir",
        ),
        (
            "memory-plot-unwritable",
            lambda t, r: [
                "memory",
                "--model",
                "mlp",
                "--input",
                "4",
                "--plot",
                str(t / "no" / "p.png"),
            ],
            "does not exist",
        ),
        (
            "pad-to-abc",
            lambda t, r: ["train", *TINY, "--data-opt", "pad_to=abc"],
            "pad_to must be an integer",
        ),
        (
            "unknown-data-opt",
            lambda t, r: ["train", *TINY, "--data-opt", "bogus=1"],
            "has no option 'bogus'",
        ),
        (
            "fit-widths-empty",
            lambda t, r: ["fit", "--dataset", "digits", "--widths", ""],
            "--widths '' must be",
        ),
        (
            "fit-widths-abc",
            lambda t, r: ["fit", "--dataset", "digits", "--widths", "abc"],
            "--widths 'abc' must be",
        ),
        (
            "init-garbage",
            lambda t, r: ["train", *TINY, "--init", str(r / "config.toml")],
            "is not a readable torch file",
        ),
        (
            "cnn4-zero-widths",
            lambda t, r: ["train", *TINY[:2], "--model", "cnn4", "--model-opt", "widths=0,0,0,0"],
            "widths must be positive",
        ),
        (
            "mlp-zero-width",
            lambda t, r: ["train", *TINY, "--model-opt", "widths=0"],
            "widths must be positive",
        ),
        (
            "shape-mismatch",
            lambda t, r: [
                "train",
                *TINY[2:],
                "--dataset",
                "mnist",
                "--data-root",
                str(mismatched_mnist(t)),
            ],
            "both splits must come from the same dataset",
        ),
        (
            "synthetic-size-0",
            lambda t, r: ["train", "--dataset", "synthetic", "--data-opt", "size=0"],
            "size must be an integer >= 1",
        ),
        ("lr-inf", lambda t, r: ["train", *TINY, "--lr", "inf"], "lr must be a finite number"),
        (
            "momentum-5",
            lambda t, r: ["train", *TINY, "--momentum", "5"],
            "momentum must lie in [0, 1)",
        ),
    ]


@pytest.mark.parametrize(
    "make_args, message",
    [case[1:] for case in bad_input_cases()],
    ids=[case[0] for case in bad_input_cases()],
)
def test_bad_input_is_one_line_exit_2(run_cli, tmp_path, finished_run, make_args, message):
    code, _, err = run_cli(*make_args(tmp_path, finished_run))
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epoch", "1"], "no such option --epoch; did you mean --epochs?"),
        (["train", "--batch", "16"], "no such option --batch; did you mean --batch-size?"),
        (["train", "--out", "x"], "no such option --out; did you mean --out-dir?"),
        (["compare", "--epoch", "1"], "no such option --epoch; did you mean --epochs?"),
        (["memory", "--model", "mlp", "--batch", "3"], "did you mean --batch-size?"),
        (["train", "--inr", "0.3"], "--inr is an option of method facto, not of baseline"),
    ],
)
def test_flag_typos_suggest_the_flag(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_train_help_shows_defaults_and_no_bool_placeholder(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "<bool>" not in out
    text = " ".join(out.split())
    for expected in ("--lr <float> Peak learning rate. [default: 0.05]", "[default: cnn4]"):
        assert expected in text


def test_compare_takes_the_run_flags(run_cli, monkeypatch):
    import smallfoot.runner.compare

    seen = {}

    def fake_compare(base, *args, **kwargs):
        seen["base"] = base
        raise ConfigError("stopped")  # before any training: only the config is under test

    monkeypatch.setattr(smallfoot.runner.compare, "compare_methods", fake_compare)
    code, _, err = run_cli("compare", "--dataset", "digits", "--lr", "0.01",
            "--batch-size", "16", "--seed", "3", "--data-root", "/data",
            "--model-opt", "widths=8,8,8,8", "--data-opt", "pad_to=16",
            "--methods", "facto,baseline", "--inr", "0.5",
    )  # fmt: skip
    assert code == 2 and "stopped" in err
    base = seen["base"]
    assert (base.lr, base.batch_size, base.seed, base.data_root) == (0.01, 16, 3, "/data")
    assert base.model_options == {"widths": [8, 8, 8, 8]} and base.data_options == {"pad_to": 16}
    assert base.method_options == {"inr": "0.5"}


def test_methods_and_models_name_list_options(run_cli):
    code, out, _ = run_cli("methods", "facto")
    assert code == 0 and "--inr" in out and "0.3" in out
    assert "your model (--model package.module:function): any module: its Conv2d/Linear" in out
    assert "your data (--dataset package.module:function): any dataset, streams too" in out
    code, out, _ = run_cli("methods", "subspace")
    assert "map-style datasets (in memory or read on demand), no streams" in " ".join(out.split())


def test_every_method_states_what_it_does_with_a_users_model(run_cli):
    from smallfoot.methods import list_methods

    # methods that other tests register for themselves are not smallfoot's
    for cls in [m for m in list_methods() if m.__module__.startswith("smallfoot.")]:
        assert cls.user_model, f"{cls.name} does not say what it does with a user's module"
        code, out, _ = run_cli("methods", cls.name)
        assert code == 0 and " ".join(cls.user_model.split()[:3]) in " ".join(out.split())
    code, out, _ = run_cli("models", "cnn4")
    assert code == 0 and "widths" in out and "32,64,128,128" in out
    code, _, err = run_cli("models", "nope")
    assert code == 2 and "unknown model 'nope'" in err


def test_summary_never_truncates_the_run_directory(monkeypatch):
    from rich.console import Console

    record = Console(width=60, record=True)
    monkeypatch.setattr(cli, "console", record)
    run_dir = "/tmp/" + "/".join(["a-rather-long-directory-name"] * 4)
    summary = dict(
        dataset="digits", model="mlp", method="baseline", epochs=1, train_accuracy=0.5,
        test_accuracy=0.5, test_loss=1.0, seconds=1.0, parameters=10, run_dir=run_dir,
    )  # fmt: skip
    cli.print_summary(summary)
    text = record.export_text()
    assert "…" not in text
    assert run_dir in "".join(text.replace("│", "").split())


def test_memory_takes_the_shape_from_a_dataset(run_cli):
    code, out, err = run_cli("memory", "--model", "mlp", "--dataset", "digits",
        "--batch-size", "4", "--estimate", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["per_pixel"]["pixels"] == 4 * 8 * 8


def test_filter_flags(run_cli):
    code, out, err = run_cli("filter", "--dataset", "digits", "--k", "5",
        "--train-limit", "100", "--knn-chunk", "50", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["5"]["total"] == 100


def test_progress_bar_shows_percent_like_the_epoch_lines():
    from smallfoot.train.progress import EpochProgress

    with EpochProgress(2, 0, 1, enabled=False) as bar:
        bar.update(0.5, 0.9531)
        text = bar.progress.columns[3].render(bar.progress.tasks[0])
    assert str(text) == "loss 0.5000 acc 95.31%"
