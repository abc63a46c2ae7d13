"""Checkpoints: written atomically, verified before use, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts
(nothing that needs unpickling code), so it loads through torch's safe
loader. ``save`` writes a temporary file next to the target, flushes and
``fsync``s it, renames it over the target (atomic on POSIX), then ``fsync``s
the directory: a crash at any moment leaves either the old checkpoint or the
new one, never a torn file.

Verification. The file is torch's zip archive, in which every entry (the
pickle and each tensor's storage) carries a CRC-32 of its bytes. ``save``
always writes them (whatever ``torch.serialization.set_crc32_options`` says);
``torch.load`` never checks them, so :func:`load` does, over the whole file,
before unpickling anything: a truncated, emptied, overwritten or bit-flipped
file is refused with :class:`CheckpointError` instead of loading wrong
weights. Checkpoints written before this check existed are verified the same
way (torch has always written the CRCs), so they need no special case; a file
written with CRCs switched off is refused, as it cannot be verified.

Leftovers. The temporary file is ``.NAME.PID-HOST.XXXXXXXX.tmp`` (the
writer's process id and a hash of its host and pid namespace). A writer
killed mid-write leaves it behind; :func:`clean_leftovers` (run by every
``save`` and at the start of ``fit``) deletes those of this checkpoint name
whose writer is gone — never a live writer's, never another name's. The
older unmarked form ``.NAME.XXXXXXXX.tmp`` is deleted once untouched for
:data:`LEGACY_TEMP_AGE_S` (no write stalls that long).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "save", "load", "clean_leftovers", "rng_state", "set_rng_state"]

FRESH = ("Delete it, pass resume=False (the run starts afresh and overwrites it) "
         "or pass another checkpoint path.")
LEGACY_TEMP_AGE_S = 3600.0


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, incomplete, or written by a run
    that does not match this one.

    ``path``: the file; ``problem``: what is wrong; ``remedy``: what to do;
    ``differences``: for a mismatch, one line per difference (else empty).
    """

    def __init__(self, path, problem: str, remedy: str = FRESH, differences=()):
        self.path, self.problem, self.remedy = str(path), problem, remedy
        self.differences = list(differences)
        listed = "".join(f"\n  {d}" for d in self.differences)
        super().__init__(f"checkpoint {self.path!r}: {problem}" + (f":{listed}\n" if listed else ". ") + remedy)

    def __reduce__(self):  # pickles across processes with its fields, not just the message
        return type(self), (self.path, self.problem, self.remedy, self.differences)


def save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (write, fsync, rename, fsync the directory), with
    the archive's CRC-32s that :func:`load` verifies. Deletes this path's leftover temporary
    files first (:func:`clean_leftovers`). Raises :class:`CheckpointError` if ``path`` is a
    directory; ``OSError`` if the write fails (the previous checkpoint is then kept intact)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(path, "it is a directory, not a checkpoint file",
                              "Pass a file path, e.g. checkpoint='runs/model.pt'.")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            crc = torch.serialization.get_crc32_options()
            if not crc:
                torch.serialization.set_crc32_options(True)
            try:
                torch.save(obj, f)
            finally:
                if not crc:
                    torch.serialization.set_crc32_options(False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return path
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify the checkpoint at ``path`` (every CRC-32 of its archive) and read it with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling).

    Raises ``FileNotFoundError`` if nothing is at ``path``, and :class:`CheckpointError`
    (naming the path, what is wrong and what to do) for anything else that is not a
    readable, intact checkpoint dict: a directory, an empty, truncated or damaged file,
    another kind of file, or one holding objects the weights-only loader refuses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.is_dir():
        raise CheckpointError(path, "it is a directory, not a checkpoint file")
    try:
        f = open(path, "rb")
    except OSError as err:
        raise CheckpointError(path, f"it cannot be opened ({err.strerror or err})") from err
    with f:  # one open file for the check and the load: a concurrent save cannot swap it between them
        _verify(f, path)
        f.seek(0)
        try:
            obj = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            detail = next((line.strip() for line in str(err).splitlines() if "WeightsUnpickler" in line), "")
            raise CheckpointError(path, "torch's weights only loader refused it: it holds objects that "
                                        f"need unpickling code, which an optimlab checkpoint never does"
                                        + (f" ({detail})" if detail else "")) from None
        except Exception as err:  # intact archive, unreadable content (e.g. a foreign torch file)
            raise CheckpointError(path, f"it could not be read ({type(err).__name__}: "
                                        f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"it holds a {type(obj).__name__}, not an optimlab checkpoint (a dict)")
    return obj


def _verify(f, path: Path) -> None:
    """Check that ``f`` is a complete torch archive whose every entry matches its CRC-32."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise CheckpointError(path, "it is empty (0 bytes)")
    head = f.read(4)
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            entries = archive.infolist()
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        if head == b"PK\x03\x04":
            problem = f"it is truncated or damaged: its archive cannot be read ({err})"
        else:
            problem = f"it is not a checkpoint: not a torch archive (it starts with {head!r})"
        raise CheckpointError(path, problem) from None
    except Exception as err:  # e.g. a damaged header: a size past the end, a flag asking for a password
        raise CheckpointError(path, f"it is truncated or damaged: reading its archive failed "
                                    f"({type(err).__name__}: {err})") from None
    if not any(e.filename.rpartition("/")[2] == "data.pkl" for e in entries):
        raise CheckpointError(path, "it is a zip archive but not a torch checkpoint (no data.pkl)")
    if all(e.CRC == 0 for e in entries if e.file_size):
        raise CheckpointError(path, "it was written without CRC-32s (torch.serialization."
                                    "set_crc32_options(False)), so it cannot be verified")
    if bad is not None:
        raise CheckpointError(path, f"it is corrupt: the archive entry {bad!r} does not match its CRC-32 "
                                    "(the file was damaged or modified after it was written)")


# ---------------------------------------------------------------- leftovers
def _writer_tag(pid: int | None = None) -> str:
    """``PID-HOST``: HOST hashes the host name and pid namespace, so a pid is only ever
    judged dead on the machine (and in the container) that can see it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    host = hashlib.sha1(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]
    return f"{os.getpid() if pid is None else pid}-{host}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (True whenever that cannot be ruled out)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    try:  # a killed but unreaped child (zombie) cannot write any more
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of checkpoint ``path`` left next to it;
    return them. Only this name's files go: those marked with a writer on this host whose
    process is gone, and unmarked ones (older optimlab) untouched for ``LEGACY_TEMP_AGE_S``.
    Never raises for a file it cannot delete (another process may be cleaning it too)."""
    path = Path(path)
    name = re.escape(path.name)
    marked = re.compile(rf"\.{name}\.(\d+)-([0-9a-f]{{8}})\.[a-z0-9_]{{8}}\.tmp")
    legacy = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")
    host = _writer_tag(0).partition("-")[2]
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = marked.fullmatch(entry.name)
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if match is not None:
                stale = match.group(2) == host and not _alive(int(match.group(1)))
            elif legacy.fullmatch(entry.name):
                stale = now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE_S
            else:
                continue
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------------- RNGs
def rng_state() -> dict[str, Any]:
    """Every random-number generator a training step may draw from, as safe-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": _listify(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
