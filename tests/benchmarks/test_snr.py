from benchmarks.snr import run_snr_bench


def test_quick_run_writes_its_figures_and_matches_theory(tmp_path):
    result = run_snr_bench(quick=True, out_dir=tmp_path)
    assert result.figures and all(path.exists() for path in result.figures)
    assert {path.name for path in result.figures} >= {"alpha_batchnorm.png", "snr_by_layer.png"}
    theory_rows = [r for r in result.rows if "relative_error" in r]
    assert theory_rows and all(abs(r["relative_error"]) < 0.1 for r in theory_rows)
    chains = [r for r in result.rows if "layers" in r and r["negative_slope"] == 0.1]
    worst = {r["model"]: r["noise_worst_snr_db"] for r in chains if r["blocks_per_stage"] == 2}
    assert worst["hybrid18"] > worst["layerwise18"]
    assert "snr_through_chain" in result.notes
