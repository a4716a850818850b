"""Live progress on the terminal (rich): one bar per round with clients done, failures and loss."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self._losses: list[float] = []
        self._failed = 0

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def start_round(self, strategy: str, rnd: int, rounds: int, clients: int) -> None:
        self._losses, self._failed = [], 0
        if self._progress is not None:
            desc = f"{strategy:<12} round {rnd}/{rounds}"
            self._task = self._progress.add_task(desc, total=clients, info="")

    def _info(self) -> str:
        parts = []
        if self._losses:
            parts.append(f"loss {statistics.fmean(self._losses):.4f}")
        if self._failed:
            parts.append(f"[red]{self._failed} failed[/red]")
        return "  ".join(parts)

    def client_done(self, loss: float | None) -> None:
        if loss is not None:
            self._losses.append(loss)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=self._info())

    def client_failed(self) -> None:
        self._failed += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=self._info())

    def log(self, message: str) -> None:
        self.console.print(message)
