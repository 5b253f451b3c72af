import json

from smallfoot.compare import compare_methods, plot_comparison
from smallfoot.config import RunConfig
from smallfoot.methods import Method, register_method


@register_method
class AlwaysFails(Method):
    name = "test-fails-on-build"
    description = "test only: cannot build its model"

    def build_model(self, ctx):
        from smallfoot.errors import ShapeError

        raise ShapeError("this method needs 32x32 inputs")


def test_rows_ratios_and_errors(tmp_path):
    base = RunConfig(
        dataset="digits", model="mlp", epochs=1, progress=False, model_options={"widths": [16]}
    )
    rows = compare_methods(base, ["test-fails-on-build", "baseline"], tmp_path)
    assert [r["method"] for r in rows] == ["baseline", "test-fails-on-build"]
    assert rows[0]["seconds_ratio"] == 1.0 and rows[0]["peak_ratio"] == 1.0
    assert rows[0]["peak"] > 0 and 0 <= rows[0]["test_accuracy"] <= 1
    assert "32x32" in rows[1]["error"]
    assert json.loads((tmp_path / "compare.json").read_text()) == rows
    assert plot_comparison(rows, tmp_path / "plot.png").stat().st_size > 1000
