"""One way to draw a figure to a file: matplotlib without a display, saved atomically, closed.

Every plot of the package (memory timelines, comparisons, benchmark figures) is drawn inside
:func:`figure`, so the backend, the resolution and the clean-up are set in one place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smallfoot.errors import ConfigError

DPI = 120
"""Resolution of every saved figure (dots per inch)."""


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed); a clear
    error when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install matplotlib (or install smallfoot with its "
            "[plots] extra)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(
    path: str | Path, *, nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 4),
    **subplots: Any,
) -> Iterator[tuple[Any, Any]]:  # fmt: skip
    """Draw into ``(fig, axes)`` (as ``plt.subplots(nrows, ncols)`` returns them; ``size`` in
    inches) and, when the block ends without an error, lay it out and write it to ``path``
    (format from the suffix, :data:`DPI`) through a temporary file, so a half-drawn figure
    never replaces a good one. The figure is closed either way."""
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=size, **subplots)
    try:
        yield fig, axes
        save_figure(fig, path)
    finally:
        plt.close(fig)


def save_figure(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Lay ``fig`` out, write it to ``path`` (format from the suffix) through a temporary file,
    close it, and return the path: the end of every figure drawn without :func:`figure`."""
    path = Path(path)
    try:
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=path.suffix or ".png")
        os.close(handle)
        try:
            fig.savefig(temporary, dpi=dpi)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    finally:
        pyplot().close(fig)
    return path
