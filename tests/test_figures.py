"""The one figure helper: saved atomically, always closed."""

import pytest

from smallfoot._figures import figure, pyplot


def test_saves_and_closes(tmp_path):
    path = tmp_path / "sub" / "plot.png"
    with figure(path, ncols=2, size=(4, 2)) as (fig, axes):
        assert len(axes) == 2
        axes[0].plot([0, 1], [1, 0])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pyplot().get_fignums() == []


def test_an_error_while_drawing_keeps_the_old_file(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), figure(path) as (_, ax):
        ax.plot([0, 1])
        raise RuntimeError("drawing failed")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path] and pyplot().get_fignums() == []
