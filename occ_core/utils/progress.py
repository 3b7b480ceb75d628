"""Rich progress bars shared by every loop over frames.

Bars go to stderr so that stdout stays clean for machine-readable output. They are hidden when
``OCC_NO_PROGRESS=1`` is set (useful in logs) and rich itself stays quiet when stderr is not a
terminal.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def _rate_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second (or seconds per item when slower than one per second)."""

        def render(self, task):  # noqa: D102
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("? it/s", style="progress.data.speed")
            if speed >= 1:
                return Text(f"{speed:.1f} it/s", style="progress.data.speed")
            return Text(f"{1 / speed:.1f} s/it", style="progress.data.speed")

    return RateColumn


def make_progress():
    """A rich Progress with description, bar, count, rate, elapsed and ETA columns."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    _RateColumn = _rate_column_class()
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=os.environ.get("OCC_NO_PROGRESS", "") not in ("", "0"),
        transient=False,
    )


def track(items: Iterable[T] | Sequence[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` showing a progress bar labelled ``description``."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
