"""The planner: candidates estimated on fake tensors, ranked, cached, verified."""

import json

import pytest
import torch

import smallfoot
from smallfoot.errors import BudgetError, ConfigError, ShapeError
from smallfoot.plan import (
    Candidate,
    Spec,
    candidate_specs,
    estimate_spec,
    parse_bytes,
    rank_key,
    timing_shape,
    verify_plan,
)
from smallfoot.plan import (
    plan as plan_fn,
)
from smallfoot.runner.step import method_step_memory

SHAPE = (1, 16, 16)
SPECS = [
    Spec("baseline", "baseline"),
    Spec("2 micro-batches", "accumulate", {"micro_batches": 2}),
    Spec("4 micro-batches", "accumulate", {"micro_batches": 4}),
    Spec("checkpoint, 3 segments", "checkpoint", {"segments": 3}),
    Spec("reversible revnet", "reversible", {"variant": "revnet"}),
    Spec("2 + checkpoint", "accumulate+checkpoint", {"micro_batches": 2, "segments": 17}),
]


def test_parse_bytes():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("500 MB") == 500 * 10**6
    assert parse_bytes("1e3") == 1000
    assert parse_bytes(12) == 12
    for bad in ("4 parsecs", "-1GiB", "0", "GiB"):
        with pytest.raises(ConfigError, match="budget"):
            parse_bytes(bad)


def test_library_call_is_smallfoot_plan():
    result = smallfoot.plan("cnn4", (8, *SHAPE), "1GiB", specs=SPECS[:1], timed=False)
    assert result.chosen.name == "baseline"
    assert smallfoot.plan.verify_plan is verify_plan


def test_candidates_cover_every_technique():
    specs = candidate_specs("cnn4", SHAPE, 32)
    methods = {s.method for s in specs}
    assert {"baseline", "accumulate", "checkpoint", "reversible", "facto", "layerwise"} <= methods
    assert "offload" not in methods  # offloading saves nothing on the CPU
    assert "offload" in {s.method for s in candidate_specs("cnn4", SHAPE, 32, device="cuda")}
    parts = [s.options["micro_batches"] for s in specs if s.method == "accumulate"]
    assert parts == [2, 4, 8, 16, 32]  # down to micro-batches of one sample
    assert "accumulate+checkpoint" in methods
    full = [s.options for s in specs if s.method == "checkpoint" and "policy" not in s.options]
    segments = [options["segments"] for options in full]
    assert segments == sorted(set(segments), reverse=True) and min(segments) == 2
    # PyTorch's selective checkpointing, one segment per top-level layer
    selective = [s.options for s in specs if s.options.get("policy") == "selective"]
    assert selective == [{"segments": max(segments), "policy": "selective"}]


def test_plan_ranks_what_fits_and_says_why_the_rest_does_not():
    baseline = method_step_memory("cnn4", SHAPE, 32, fake=True).peak
    checkpoint = method_step_memory(
        "cnn4", SHAPE, 32, method="checkpoint", method_options={"segments": 3}, fake=True
    ).peak
    budget = (baseline + checkpoint) // 2 if checkpoint < baseline else baseline - 1
    result = plan_fn("cnn4", torch.zeros(32, *SHAPE), budget, specs=SPECS, timed=False)
    assert result.baseline_peak == baseline
    by_name = {c.name: c for c in result.candidates}
    assert by_name["checkpoint, 3 segments"].estimated_peak == checkpoint
    assert not by_name["baseline"].fits and "> budget" in by_name["baseline"].reason
    fits = [c for c in result.candidates if c.fits]
    assert fits and result.candidates[: len(fits)] == fits
    assert all(c.estimated_peak <= budget for c in fits)
    assert all(
        c.estimated_peak is None or c.estimated_peak > budget
        for c in result.candidates[len(fits) :]
    )
    assert result.chosen is fits[0]
    # more micro-batches than the first that fits are not tried
    parts = [c.options["micro_batches"] for c in result.candidates if c.method == "accumulate"]
    assert (
        parts == sorted(parts)
        and sum(c.fits for c in result.candidates if c.method == "accumulate") <= 1
    )
    refused = by_name["reversible revnet"]
    assert refused.estimated_peak is None or refused.estimated_peak > 0


def test_json_schema_bytes_as_integers():
    result = plan_fn("cnn4", (8, *SHAPE), "1GiB", specs=SPECS[:2], timed=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {"budget", "baseline_peak", "chosen", "candidates"}
    assert data["budget"] == 2**30 and isinstance(data["baseline_peak"], int)
    keys = {"name", "methods", "options", "estimated_peak", "fits", "time_overhead",
            "accuracy_evidence", "reason"}  # fmt: skip
    for candidate in data["candidates"]:
        assert set(candidate) == keys
        assert isinstance(candidate["estimated_peak"], int)
    assert data["chosen"]["name"] == "baseline"  # it fits, and nothing is cheaper


def test_accuracy_evidence_comes_from_the_committed_claims(tmp_path):
    claim = {
        "id": "facto.cut_at_1pt", "claim": "Facto cuts bytes on Fashion-MNIST.", "paper": "t3",
        "measured": 3.04, "unit": "points", "comparison": "<=", "target": 1.0, "met": False,
        "seeds": 1, "command": "smallfoot bench facto",
    }  # fmt: skip
    (tmp_path / "facto.json").write_text(json.dumps({"benchmark": "facto", "claims": [claim]}))
    spec = Spec("facto", "facto", {"inr": 0.3})
    result = plan_fn("cnn4", (8, *SHAPE), "1GiB", specs=[spec], timed=False, results_dir=tmp_path)
    facto = next(c for c in result.candidates if c.method == "facto")
    (evidence,) = facto.accuracy_evidence
    assert evidence["claim"] == "facto.cut_at_1pt" and evidence["measured"] == 3.04
    assert evidence["datasets"] == ["fashion-mnist"] and evidence["met"] is False
    baseline = next(c for c in result.candidates if c.method == "baseline")
    assert "construction" in baseline.accuracy_evidence[0]


def test_estimates_and_timings_are_cached(tmp_path, monkeypatch):
    cache = tmp_path / "plan.json"
    first = plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=SPECS[:2], cache=cache)
    assert cache.exists()

    def fail(*args, **kwargs):
        raise AssertionError("not cached")

    monkeypatch.setattr("smallfoot.plan.estimate_spec", fail)
    monkeypatch.setattr("smallfoot.plan.time_spec", fail)
    second = plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=SPECS[:2], cache=cache)
    assert second.to_dict() == first.to_dict()
    with pytest.raises(AssertionError, match="not cached"):  # another batch is another key
        plan_fn("cnn4", (8, *SHAPE), "1GiB", specs=SPECS[:2], cache=cache)
    # a file written by other code starts afresh: its entries are neither read nor kept
    monkeypatch.setattr("smallfoot.plan.source_digest", lambda: "other code")
    with pytest.raises(AssertionError, match="not cached"):
        plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=SPECS[:2], cache=cache)


def test_the_baseline_is_timed_again_after_the_candidates(tmp_path, monkeypatch):
    timed, seconds = [], iter([2.0, 3.0, 1.5, 3.0, 2.5])

    def fake_time(spec, **kwargs):
        timed.append(spec.name)
        return next(seconds)

    def baseline_seconds(result):
        return next(c for c in result.candidates if c.name == "baseline").seconds_per_step

    monkeypatch.setattr("smallfoot.plan.time_spec", fake_time)
    cache = tmp_path / "plan.json"
    specs = [SPECS[0], SPECS[3]]
    result = plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=specs, cache=cache)
    assert timed == ["baseline", "checkpoint, 3 segments", "baseline"]
    assert baseline_seconds(result) == 1.5  # the faster of its two timings, kept in the cache
    timed.clear()
    assert baseline_seconds(plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=specs, cache=cache)) == 1.5
    assert timed == []
    # a new candidate timed beside a cached baseline: the baseline again, the fastest counts
    specs.append(SPECS[4])
    result = plan_fn("cnn4", (4, *SHAPE), "1GiB", specs=specs, cache=cache)
    assert timed == ["reversible revnet", "baseline"] and baseline_seconds(result) == 1.5


def test_timing_shape_halves_large_images_only():
    assert timing_shape((3, 224, 224)) == (3, 112, 112)
    assert timing_shape((1, 28, 28)) == (1, 28, 28)
    assert timing_shape((10,)) == (10,)


def test_bad_example_input_is_refused():
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        plan_fn("cnn4", (8,), "1GiB", specs=SPECS[:1])


def test_verify_fails_loudly_when_the_real_peak_breaks_the_budget():
    wrong = Candidate("baseline", ["baseline"], {}, 1, True, None, [], "")
    with pytest.raises(BudgetError, match="the estimate was wrong"):
        verify_plan(wrong, "cnn4", SHAPE, 8, budget=2)


def test_verify_measures_the_real_peak():
    result = plan_fn("cnn4", (64, 1, 28, 28), "1GiB", specs=SPECS[:1], timed=False)
    checked = verify_plan(result.chosen, "cnn4", (1, 28, 28), 64, result.budget)
    assert checked["estimated_peak"] == result.chosen.estimated_peak
    assert checked["real_peak"] > 0 and checked["fits"]


@pytest.fixture
def few_specs(monkeypatch):
    monkeypatch.setattr("smallfoot.plan.candidate_specs", lambda *args, **kwargs: SPECS[:3])


def test_cli_plan_json(run_cli, few_specs):
    code, out, _ = run_cli("plan", "--model", "cnn4", "--input", "1x16x16",
                           "--batch-size", "8", "--budget", "1GiB", "--json", "--no-cache")  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["budget"] == 2**30 and data["chosen"]["name"] == "baseline"


def test_cli_plan_table_and_no_fit(run_cli, few_specs):
    args = ["plan", "--model", "cnn4", "--input", "1x16x16", "--batch-size", "8", "--no-cache"]
    code, out, _ = run_cli(*args, "--budget", "1GiB")
    assert code == 0 and "chosen: baseline (--method baseline)" in out
    code, out, err = run_cli(*args, "--budget", "1KiB")
    assert code == 2 and "no candidate fits 0.0 MiB" in err and "does not fit:" in out
    code, _, err = run_cli(*args, "--budget", "1GiB", "--train")
    assert code == 2 and "--train needs --dataset NAME" in err


def test_cli_plan_takes_dataset_options(run_cli, few_specs):
    args = ["plan", "--model", "cnn4", "--dataset", "digits", "--batch-size", "8",
            "--budget", "1GiB", "--json", "--no-cache"]  # fmt: skip
    code, out, err = run_cli(*args)
    assert code == 0, err
    code, padded, err = run_cli(*args, "--data-opt", "pad_to=16")
    assert code == 0, err
    # the digits' 8x8 images padded to 16x16: four times the positions in every layer
    assert json.loads(padded)["baseline_peak"] > json.loads(out)["baseline_peak"]
    code, _, err = run_cli("plan", "--model", "cnn4", "--budget", "1GiB", "--data-opt", "pad_to=16")
    assert code == 2 and "--data-root and --data-opt need --dataset NAME" in err


def test_composition_is_planned_where_neither_part_fits():
    def peak(method, **options):
        return method_step_memory(
            "cnn4", SHAPE, 32, method=method, method_options=options, fake=True
        ).peak

    both = peak("accumulate+checkpoint", micro_batches=2, segments=17)
    parts = [peak("accumulate", micro_batches=2), peak("checkpoint", segments=3)]
    assert both < min(parts)
    specs = [SPECS[0], SPECS[1], SPECS[3], SPECS[5]]
    result = plan_fn("cnn4", (32, *SHAPE), both, specs=specs, timed=False)
    assert result.chosen.methods == ["accumulate", "checkpoint"]
    assert result.chosen.command_flags() == (
        "--method accumulate+checkpoint --micro-batches 2 --segments 17"
    )


@pytest.mark.slow
def test_cli_plan_trains_the_chosen_plan_and_checks_its_peak(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(
        "plan", "--model", "cnn4", "--dataset", "digits", "--batch-size", "128",
        "--budget", "4MiB", "--train", "--epochs", "1", "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    assert "(within the budget); plain backprop needs" in out and "budget 4.0 MiB:" in out


def test_facto_fits_only_where_its_full_rank_epochs_fit():
    """The planner's Facto runs keep the paper's schedule: the converted model trains in
    full-rank mode until the first rate drop, so the whole run's peak is the larger of its
    full-rank and its low-rank step."""
    facto = Spec("facto", "facto", {"inr": 0.3, "kernel": 2, "apply_ratio": 0.6})
    low_rank = estimate_spec(facto, "cnn4", SHAPE, 32)["peak"]
    full_rank = estimate_spec(facto, "cnn4", SHAPE, 32, full_rank=True)
    baseline = method_step_memory("cnn4", SHAPE, 32, fake=True).peak
    # the converted model keeps 1-bit masks in full-rank mode too: not the baseline's step
    assert full_rank["stage"] == "full-rank" and low_rank < full_rank["peak"] < baseline
    budget = (low_rank + full_rank["peak"]) // 2
    result = plan_fn("cnn4", (32, *SHAPE), budget, specs=[SPECS[0], facto], timed=False)
    (candidate,) = [c for c in result.candidates if c.method == "facto"]
    assert not candidate.fits and candidate.estimated_peak == full_rank["peak"]
    assert "full-rank" in candidate.stage and "its low-rank steps take" in candidate.reason
    roomy = plan_fn("cnn4", (32, *SHAPE), full_rank["peak"], specs=[SPECS[0], facto], timed=False)
    assert [c.fits for c in roomy.candidates] == [True, False]  # the baseline does not fit
    assert roomy.chosen.method == "facto"


def test_a_faster_lossy_candidate_does_not_displace_the_baseline():
    def candidate(name, overhead):
        return Candidate(name, [name], {}, 100, True, overhead, [], "fits")

    ranked = sorted(
        [candidate("baseline", 0.0), candidate("facto", -0.15), candidate("checkpoint", 0.3),
         candidate("layerwise", None), candidate("accumulate", 0.04)],
        key=rank_key,
    )  # fmt: skip
    assert [c.name for c in ranked] == [
        "baseline",
        "facto",
        "accumulate",
        "checkpoint",
        "layerwise",
    ]


def test_a_streams_batch_counts_whole_on_the_cpu_and_by_micro_batch_on_a_gpu(tmp_path):
    """The trainer reads a stream's batch whole into the CPU's memory and moves only its
    micro-batches to a GPU, so a GPU plan does not charge the other micro-batches' inputs."""
    split = SPECS[1]  # 2 micro-batches
    in_memory = estimate_spec(split, "cnn4", SHAPE, 32)["peak"]
    on_cpu = estimate_spec(split, "cnn4", SHAPE, 32, streamed=True)["peak"]
    on_gpu = estimate_spec(split, "cnn4", SHAPE, 32, streamed=True, device="cuda")["peak"]
    micro_batch_inputs = 16 * torch.Size(SHAPE).numel() * 4 + 16 * 8  # float32 images, int64 labels
    assert on_gpu == in_memory and on_cpu == in_memory + micro_batch_inputs
    # plan() passes its device on, and keeps the two estimates apart in its cache
    cache = tmp_path / "plan.json"
    planned = {
        device: plan_fn(
            "cnn4", (32, *SHAPE), "1GiB", specs=SPECS[:2], timed=False, streamed=True,
            device=device, cache=cache,
        )
        for device in ("cpu", "cuda", "cpu")
    }  # fmt: skip
    peaks = {
        d: [c.estimated_peak for c in p.candidates if c.method == "accumulate"]
        for d, p in planned.items()
    }
    assert peaks == {"cpu": [on_cpu], "cuda": [on_gpu]}
