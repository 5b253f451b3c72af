"""A rich progress bar for one epoch: batches, loss, accuracy and ETA."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """Context manager showing ``epoch i/N [bar] batches loss acc% ETA``; silent when disabled.

    Accuracy is a percent with two decimals, as in the epoch lines and the summary."""

    def __init__(self, total_batches: int, epoch: int, epochs: int, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.2%}"),
            TimeRemainingColumn(),
            transient=True,
            disable=not enabled,
        )
        self.total = total_batches
        self.task = None

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.total, loss=0.0, acc=0.0)
        return self

    def update(self, loss: float, accuracy: float) -> None:
        """Advance one batch and show the running mean loss and accuracy."""
        self.progress.update(self.task, advance=1, loss=loss, acc=accuracy)

    def __exit__(self, *exc) -> None:
        self.progress.stop()
