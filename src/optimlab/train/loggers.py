"""Loggers: the run's scalars, as they are recorded, to TensorBoard and to CSV files.

``fit(..., logger=...)`` takes ``"tensorboard:DIR"``, ``"csv:PATH"``, a logger
object (:class:`TensorBoardLogger`, :class:`CSVLogger`, or anything with
``on_epoch_end(trainer, row)``), or a list of these — Lightning's ``logger=``
with Keras's ``TensorBoard`` / ``CSVLogger`` callbacks. A logger is a callback:
at every epoch's end (after the row is recorded in the history, the run store
and the checkpoint) it writes the epoch row and the step rows added since, and
flushes; when ``fit`` ends, however it ends (``on_fit_end``), it writes what is
left (a stopped or interrupted epoch's partial rows) and closes.

What is written is exactly what the history holds: every numeric key of the
epoch rows and of the sampled step rows (losses, accuracies, learning rate,
momentum, global and per-layer gradient norms, update ratios, weight norms,
sharpness when tracked, times). The x axis is the optimizer step (the rows'
``step``). On a resume (``fit(..., resume=True)``) a logger writes again from
the checkpoint's history: the CSV files are rewritten from it, and the
TensorBoard events are superseded from its first step on
(``SummaryWriter(purge_step=...)``): no duplicate or stale rows for the steps
done again. A path that cannot be written (under a regular file, a read-only
directory) is a ``ValueError`` when the logger is made, before training; a
write that fails later (a full disk) warns once (``RuntimeWarning``) and that
logger stops, like the run store: the log is a record, not the work.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLogger", "CSVLogger", "bind", "tag"]

INSTALL = "pip install 'optimlab[tensorboard]'"
_MAIN = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc"}
_AXES = ("epoch", "step")


def tag(kind: str, key: str) -> str:
    """The TensorBoard tag of history key ``key`` in an ``"epoch"`` or ``"step"`` row.

    Epoch rows: ``train_loss`` → ``train/loss``, ``train_acc`` → ``train/acc``, ``val_loss`` →
    ``val/loss``, ``val_acc`` → ``val/acc``, any other key → ``epoch/<key>`` (``epoch/lr``,
    ``epoch/grad_norm/<layer>``, ``epoch/time_s``). Step rows: ``loss`` (the mean over the
    steps since the previous sample) → ``train/loss_step``, any other key as it is
    (``grad_norm``, ``grad_norm/<layer>``, ``update_ratio/<layer>``, ``lr``, ``sharpness``)."""
    if kind == "epoch":
        return _MAIN.get(key, f"epoch/{key}")
    if kind == "step":
        return "train/loss_step" if key == "loss" else key
    raise ValueError(f"kind must be 'epoch' or 'step', got kind={kind!r}")


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_writable(path: Path, what: str, *, directory: bool) -> None:
    """``ValueError`` naming ``path`` unless it can be created and written; creates nothing."""
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{what} {str(path)!r} cannot be written: it exists and is not a directory")
        if not directory and path.is_dir():
            raise ValueError(f"{what} {str(path)!r} cannot be written: it is a directory, not a file")
        target = path if directory else path.parent
        if not os.access(target, os.W_OK | os.X_OK) or (not directory and not os.access(path, os.W_OK)):
            raise ValueError(f"{what} {str(path)!r} cannot be written: no write permission")
        return
    ancestor = path.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {str(path)!r} cannot be written: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r} cannot be written: no write permission in {str(ancestor)!r}")


class _RowLogger:
    """Writes the history's rows it has not written yet; subclasses say how."""

    def __init__(self):
        self._history = None
        self._epochs = 0   # history.epochs written
        self._steps = 0    # history.steps written
        self._failed = False

    # ------------------------------------------------------------ the callback
    def on_epoch_end(self, trainer, row) -> None:
        self._sync(trainer)

    def on_fit_end(self, trainer) -> None:
        """Write what is left and close (``fit`` calls it however it ends)."""
        try:
            self._sync(trainer)
        finally:
            self._guard(self._close)

    def _sync(self, trainer) -> None:
        if self._failed:
            return
        history = trainer.history
        if history is not self._history:  # a new fit (or a resume): write its whole history afresh
            self._guard(self._close)
            self._history, self._epochs, self._steps = history, 0, 0
            resumed = history.config.get("resumed_from_step") is not None
            self._guard(lambda: self._start(history, resumed))
        epochs, steps = history.epochs[self._epochs:], history.steps[self._steps:]
        if (epochs or steps) and not self._failed:
            self._guard(lambda: self._write(history, epochs, steps))
            self._epochs, self._steps = len(history.epochs), len(history.steps)

    def _guard(self, action) -> None:
        if self._failed:
            return
        try:
            action()
        except OSError as err:
            self._failed = True
            warnings.warn(f"{self!r}: writing failed ({type(err).__name__}: {err}); training goes on without "
                          "this logger (the history and the run store still hold every row)", RuntimeWarning,
                          stacklevel=3)

    # ------------------------------------------------------------ per kind
    def _start(self, history, resumed: bool) -> None:
        pass

    def _write(self, history, epochs: list[dict], steps: list[dict]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class TensorBoardLogger(_RowLogger):
    """Every numeric key of the epoch and step rows as TensorBoard scalars in ``log_dir``.

    Tags: :func:`tag` (``train/loss``, ``val/loss``, ``grad_norm/<layer>``, ...);
    ``global_step`` = the optimizer step. Scalars are stored as float32 (TensorBoard's
    ``simple_value``). Written through ``torch.utils.tensorboard.SummaryWriter``, flushed at
    every epoch's end. A fresh run adds an event file next to any already in ``log_dir``
    (TensorBoard expects one directory per run); a resumed run supersedes the directory's
    events from its history's first step on (``purge_step``) and writes them again.

    Raises ``ValueError`` naming ``log_dir`` if it cannot be created or written, and
    ``ImportError`` saying how to install TensorBoard (``pip install 'optimlab[tensorboard]'``)
    if it is missing — both when the logger is made.
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"log_dir must be a directory path, got log_dir={log_dir!r}")
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError as err:
            raise ImportError(f"TensorBoardLogger needs the tensorboard package, which is not installed: "
                              f"{INSTALL} (or pip install tensorboard)") from err
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        _check_writable(self.log_dir, "TensorBoard log_dir", directory=True)
        self.writer = None

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.log_dir)!r})"

    def _start(self, history, resumed: bool) -> None:
        purge = None
        if resumed:  # hide what the interrupted process wrote from here on: it is written again
            steps = [r["step"] for r in (*history.epochs, *history.steps) if _numeric(r.get("step"))]
            purge = min(steps) if steps else history.config["resumed_from_step"] + 1
        self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge)

    def _write(self, history, epochs, steps) -> None:
        w = self.writer
        for kind, rows in (("step", steps), ("epoch", epochs)):
            for row in rows:
                step = row.get("step")
                for key, value in row.items():
                    if key not in _AXES and _numeric(value):
                        w.add_scalar(tag(kind, key), value, global_step=step)
        w.flush()

    def _close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()


class CSVLogger(_RowLogger):
    """The epoch rows to ``path`` and the step rows to ``steps_path``, as CSV tables.

    One row per epoch (one per sampled step in the steps file); the columns are ``epoch``
    and ``step`` (``step`` and ``epoch`` in the steps file), then every key of the rows
    in the order they first appear; an empty cell is a key missing from that row (or
    None). Floats are written with ``repr`` (they read back exactly); ``partial`` reads
    ``True``. ``steps_path`` defaults to ``<path stem>.steps<suffix>`` (``run.csv`` →
    ``run.steps.csv``); ``steps_path=False`` writes no steps file.

    At the first epoch's end the files are written whole from the history, atomically
    (a fresh run replaces files of an earlier one, like Keras's ``CSVLogger``); after
    that rows are appended and flushed at each epoch's end, and when a key appears that
    the header lacks the file is rewritten atomically with the wider header. A resumed
    run rewrites them from the checkpoint's history: the header is the same and no row
    appears twice. Raises ``ValueError`` naming the path if a file cannot be written.
    """

    def __init__(self, path: str | os.PathLike, *, steps_path: str | os.PathLike | bool | None = None):
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ValueError(f"path must be a file path, got path={path!r}")
        self.path = Path(path)
        if steps_path is None or steps_path is True:
            self.steps_path = self.path.with_name(f"{self.path.stem}.steps{self.path.suffix or '.csv'}")
        elif steps_path is False:
            self.steps_path = None
        elif isinstance(steps_path, (str, os.PathLike)) and str(steps_path):
            self.steps_path = Path(steps_path)
        else:
            raise ValueError(f"steps_path must be a file path, False or None, got steps_path={steps_path!r}")
        if self.steps_path is not None and self.steps_path.resolve() == self.path.resolve():
            raise ValueError(f"steps_path {str(self.steps_path)!r} is the epochs file itself: give another path")
        _check_writable(self.path, "CSV log path", directory=False)
        if self.steps_path is not None:
            _check_writable(self.steps_path, "CSV log steps_path", directory=False)
        self._headers: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"CSVLogger({str(self.path)!r})"

    def _files(self, history):
        yield "epoch", self.path, history.epochs, ["epoch", "step"]
        if self.steps_path is not None:
            yield "step", self.steps_path, history.steps, ["step", "epoch"]

    def _start(self, history, resumed: bool) -> None:
        self._headers = {}

    def _write(self, history, epochs, steps) -> None:
        new = {"epoch": epochs, "step": steps}
        for kind, path, rows, first in self._files(history):
            if not new[kind] and kind in self._headers:
                continue
            header = self._headers.get(kind)
            wider = _header(first, rows) if header is None else _header(header, new[kind])
            if header is None or len(wider) > len(header):
                self._headers[kind] = wider  # first write, or a new key: the whole file again
                _atomic_write(path, _table(wider, rows, with_header=True))
            else:
                with open(path, "a", encoding="utf-8", newline="") as f:
                    f.write(_table(header, new[kind], with_header=False))
                    f.flush()
                    os.fsync(f.fileno())


def _header(first: list[str], rows: list[dict]) -> list[str]:
    header = list(first)
    seen = set(header)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                header.append(key)
    return header


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # nan, inf, -inf: float() reads them
    return str(value)


def _table(header: list[str], rows: list[dict], *, with_header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if with_header:
        writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(key)) for key in header])
    return out.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def bind(logger) -> list[Any]:
    """``fit``'s ``logger``: None → []; ``"tensorboard:DIR"``, ``"csv:PATH"``, a logger object
    (anything with ``on_epoch_end``) or a list of these → the logger objects, made now so
    that a bad path is refused before training. Raises ``ValueError`` naming an unknown spec."""
    if logger is None or logger is False:
        return []
    items = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    bound = []
    for item in items:
        if isinstance(item, str):
            kind, sep, where = item.partition(":")
            if sep and where and kind == "tensorboard":
                bound.append(TensorBoardLogger(where))
                continue
            if sep and where and kind == "csv":
                bound.append(CSVLogger(where))
                continue
        elif callable(getattr(item, "on_epoch_end", None)):
            bound.append(item)
            continue
        raise ValueError(f"logger must be 'tensorboard:DIR', 'csv:PATH', a logger object (TensorBoardLogger, "
                         f"CSVLogger, anything with on_epoch_end) or a list of these, got logger={item!r}")
    return bound
