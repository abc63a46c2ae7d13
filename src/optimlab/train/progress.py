"""Progress display: a live bar (rich) on a terminal, one line per epoch otherwise, nothing when quiet."""

from __future__ import annotations

import sys
import time


def _fmt(row: dict) -> str:
    parts = []
    for key, label in (("train_loss", "loss"), ("train_acc", "acc"), ("val_loss", "val_loss"),
                       ("val_acc", "val_acc")):
        value = row.get(key)
        if isinstance(value, float):
            parts.append(f"{label} {value:.4f}")
    if isinstance(row.get("time_s"), float):
        parts.append(f"{row['time_s']:.1f}s")
    if isinstance(row.get("samples_per_s"), float):
        parts.append(f"{row['samples_per_s']:,.0f} samples/s")
    return " - ".join(parts)


class Quiet:
    """No output at all (``quiet=True``)."""

    def start(self, epochs: int, steps: int, first_epoch: int = 0) -> None: ...
    def epoch_start(self, epoch: int, done: int = 0) -> None: ...
    def step(self, loss: float | None = None, acc: float | None = None) -> None: ...
    def wants_values(self) -> bool: return False
    def epoch_end(self, epoch: int, row: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class Lines(Quiet):
    """One summary line per epoch on stderr (Keras's ``verbose=2``) — for logs and pipes."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.epochs = 0

    def start(self, epochs: int, steps: int, first_epoch: int = 0) -> None:
        self.epochs = epochs

    def epoch_end(self, epoch: int, row: dict) -> None:
        print(f"epoch {epoch}/{self.epochs}: {_fmt(row)}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class Bar(Lines):
    """A live rich progress bar: epochs, and batches with the running loss and accuracy."""

    def __init__(self, stream=None, refresh_s: float = 0.2):
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(file=self.stream)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=False, auto_refresh=False)
        self.refresh_s = refresh_s
        self._last = 0.0
        self._batch = None

    def start(self, epochs: int, steps: int, first_epoch: int = 0) -> None:
        super().start(epochs, steps, first_epoch)
        self.steps = steps
        self.progress.start()
        self._epoch = self.progress.add_task("epochs", total=epochs, completed=first_epoch, info="")

    def epoch_start(self, epoch: int, done: int = 0) -> None:
        if self._batch is not None:
            self.progress.remove_task(self._batch)
        self._batch = self.progress.add_task(f"epoch {epoch}", total=self.steps, completed=done, info="")
        self.progress.refresh()

    def step(self, loss: float | None = None, acc: float | None = None) -> None:
        self.progress.advance(self._batch)
        now = time.monotonic()
        if now - self._last >= self.refresh_s:
            self._last = now
            if loss is not None:
                info = f"loss {loss:.4f}" + (f" acc {acc:.4f}" if acc is not None else "")
                self.progress.update(self._batch, info=info)
            self.progress.refresh()

    def wants_values(self) -> bool:
        return time.monotonic() - self._last >= self.refresh_s

    def epoch_end(self, epoch: int, row: dict) -> None:
        self.progress.advance(self._epoch)
        self.progress.console.print(f"epoch {epoch}/{self.epochs}: {_fmt(row)}", markup=False, highlight=False)
        self.progress.refresh()

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.refresh()
        self.progress.stop()


def make(progress: bool | None, quiet: bool):
    """``quiet`` → nothing; ``progress=None`` → a live bar on a terminal, epoch lines otherwise."""
    if quiet:
        return Quiet()
    if progress is None:
        progress = sys.stderr.isatty()
    if progress:
        try:
            return Bar()
        except ImportError:  # rich missing: fall back to lines
            return Lines()
    return Lines()
