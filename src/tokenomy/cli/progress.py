"""Turn a library's step messages into a rich progress display. Messages ending in
'i/n' advance a bar for that phase; others are shown as the current step."""

from __future__ import annotations

import re
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

_COUNT = re.compile(r"^(?P<phase>.*?)\s+(?P<i>\d+)/(?P<n>\d+)$")


@contextmanager
def reporter(console: Console, enabled: bool = True, extra: tuple = ()):
    """`extra`: more rich columns after the elapsed time (distill's tokens/s and ETA)."""
    if not enabled:
        yield lambda _msg: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), *extra)
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def step(message: str) -> None:
            m = _COUNT.match(message)
            phase = m["phase"] if m else message
            if phase not in tasks:
                for other in tasks.values():  # a new phase: finish the previous ones
                    progress.update(other, completed=progress.tasks[other].total or 1,
                                    total=progress.tasks[other].total or 1)
                tasks[phase] = progress.add_task(phase, total=int(m["n"]) if m else None)
            if m:
                progress.update(tasks[phase], completed=int(m["i"]), total=int(m["n"]))

        yield step
        for task in tasks.values():
            progress.update(task, completed=progress.tasks[task].total or 1,
                            total=progress.tasks[task].total or 1)
