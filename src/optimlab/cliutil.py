"""Argument types and errors shared by every ``optimlab`` command.

Each ``type=`` function below takes the text of one command-line value and
returns the parsed value, or raises :class:`argparse.ArgumentTypeError` with
a message that quotes the value; argparse then prints
``usage: ... error: argument --x: <message>`` and exits with status 2, before
the command has done anything.

Checks that need more than one value (``--end-lr`` above ``--start-lr``),
or a look-up (an optimizer name, a database server), raise
:class:`CommandError` or ``ValueError`` from the command's ``run``; ``optimlab``'s
``main`` prints those as ``optimlab CMD: error: <message>`` with status 2
(``optimlab --debug CMD ...`` shows the traceback instead).

None of these checks writes anything: the output checks create a temporary
file in the nearest existing directory and remove it again.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CommandError", "check",
    "int_at_least", "positive_int", "non_negative_int",
    "finite_float", "positive_float", "non_negative_float",
    "int_list", "float_list", "name_list",
    "output_dir", "output_file", "existing_dir", "existing_file", "not_a_directory", "dir_path",
    "storage_url", "check_storage_reachable",
]


class CommandError(Exception):
    """Bad input found by a command after parsing, before it starts work: printed
    as ``optimlab CMD: error: <message>``, exit status 2."""


def _fail(message: str):
    raise argparse.ArgumentTypeError(message)


def check(option: str, parse: Callable[[str], object], text: str):
    """Apply a ``type=`` function outside argparse (to a default derived from other
    options), as :class:`CommandError` ``argument OPTION: <message>``."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as err:
        raise CommandError(f"argument {option}: {err}") from None


# --------------------------------------------------------------------------- numbers
def int_at_least(low: int) -> Callable[[str], int]:
    """A ``type=`` for integers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _fail(f"must be an integer >= {low}, got {text!r}")
        if value < low:
            _fail(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = "positive_int"
non_negative_int = int_at_least(0)
non_negative_int.__name__ = "non_negative_int"


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        _fail(f"must be {what}, got {text!r}")
    if not math.isfinite(value):  # "1e400" parses to inf, "nan" to nan: neither is a setting
        _fail(f"must be {what}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A ``type=`` for finite numbers (rejects ``inf``, ``nan`` and overflowing ``1e400``)."""
    return _float(text, "a finite number")


def positive_float(text: str) -> float:
    """A ``type=`` for finite numbers > 0."""
    value = _float(text, "a finite number > 0")
    if not value > 0:
        _fail(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A ``type=`` for finite numbers >= 0."""
    value = _float(text, "a finite number >= 0")
    if value < 0:
        _fail(f"must be a finite number >= 0, got {text!r}")
    return value


# --------------------------------------------------------------------------- lists
def _items(text: str, sep: str) -> list[str]:
    items = [v.strip() for v in text.split(sep)]
    if not any(items):
        _fail(f"must list at least one value, got {text!r}")
    if not all(items):  # "1,,2" or "1," is a typo, not a shorter list
        _fail(f"has an empty entry, got {text!r}")
    return items


def int_list(low: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """A ``type=`` for comma-separated integers, each >= ``low`` when given."""
    what = "integers" if low is None else f"integers >= {low}"

    def parse(text: str) -> tuple[int, ...]:
        values = []
        for item in _items(text, ","):
            try:
                value = int(item)
            except ValueError:
                _fail(f"must be comma-separated {what}, got {item!r} in {text!r}")
            if low is not None and value < low:
                _fail(f"must be comma-separated {what}, got {item!r} in {text!r}")
            values.append(value)
        return tuple(values)

    parse.__name__ = "int_list"
    return parse


def float_list(text: str, *, sep: str = ",", positive: bool = True) -> tuple[float, ...]:
    """Parse ``sep``-separated finite (by default positive) numbers; for use inside a ``type=``."""
    what = "finite numbers > 0" if positive else "finite numbers"
    values = []
    for item in _items(text, sep):
        try:
            value = float(item)
        except ValueError:
            _fail(f"must be {what}, got {item!r} in {text!r}")
        if not math.isfinite(value) or (positive and not value > 0):
            _fail(f"must be {what}, got {item!r} in {text!r}")
        values.append(value)
    return tuple(values)


def name_list(text: str) -> tuple[str, ...]:
    """A ``type=`` for a comma-separated list of names (at least one, no empty entries)."""
    return tuple(_items(text, ","))


# --------------------------------------------------------------------------- paths
def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``, and present on this machine."""
    from optimlab.train._device import resolve_device

    try:
        resolve_device(text, "--device")
    except ValueError as err:
        _fail(str(err))
    return text


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(directory: Path) -> str | None:
    """None if a file can be created in ``directory``, else why not. Actually creating one is the
    only test that holds for root (who ignores permission bits) and read-only file systems."""
    try:
        fd, name = tempfile.mkstemp(prefix=".optimlab-write-test-", dir=directory)
    except OSError as err:
        return err.strerror or str(err)
    os.close(fd)
    os.unlink(name)
    return None


def _check_creatable(text: str, path: Path) -> None:
    """``path`` may not exist yet: its closest existing ancestor must be a writable directory."""
    base = _nearest_existing(path)
    if not base.is_dir():
        _fail(f"cannot create {text!r}: {str(base)!r} is a file, not a directory")
    problem = _writable_dir(base)
    if problem:
        _fail(f"cannot write in {str(base)!r} ({problem}), got {text!r}")


def output_dir(text: str) -> str:
    """A ``type=`` for a directory the command will create (if needed) and write into."""
    if not text.strip():
        _fail(f"must be a directory path, got {text!r}")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        _fail(f"must be a directory, but {text!r} is a file")
    _check_creatable(text, path)
    return text


def output_file(text: str) -> str:
    """A ``type=`` for a file the command will write (its directory is created if needed)."""
    if not text.strip():
        _fail(f"must be a file path, got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        _fail(f"must be a file, but {text!r} is a directory")
    if path.exists():
        try:  # appending nothing changes nothing, but fails where writing would
            open(path, "ab").close()
        except OSError as err:
            _fail(f"cannot write {text!r} ({err.strerror or err})")
        return text
    _check_creatable(text, path.parent)
    return text


def dir_path(text: str) -> str:
    """A ``type=`` for a directory that may or may not exist yet, but is not a file (read access only)."""
    if not text.strip():
        _fail(f"must be a directory path, got {text!r}")
    path = Path(text).expanduser()
    base = _nearest_existing(path)
    if not base.is_dir():
        _fail(f"must be a directory, but {str(base)!r} is a file, got {text!r}")
    return text


def existing_dir(text: str) -> str:
    """A ``type=`` for a directory that must exist."""
    path = Path(text).expanduser()
    if not path.is_dir():
        _fail(f"must be an existing directory, got {text!r}" + (" (a file)" if path.exists() else ""))
    return text


def existing_file(text: str) -> str:
    """A ``type=`` for a file that must exist (read, never created)."""
    path = Path(text).expanduser()
    if not path.is_file():
        _fail(f"must be an existing file, got {text!r}" + (" (a directory)" if path.is_dir() else " (no such file)"))
    return text


def not_a_directory(text: str) -> str:
    """A ``type=`` for a file path that may not exist yet but is not a directory (nor under a file)."""
    if not text.strip():
        _fail(f"must be a file path, got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        _fail(f"must be a file, but {text!r} is a directory")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        _fail(f"cannot be under {str(base)!r}, which is a file, got {text!r}")
    return text


# --------------------------------------------------------------------------- databases
_POSTGRES = ("postgresql", "postgres")


def storage_url(text: str) -> str:
    """A ``type=`` for an Optuna storage URL: ``sqlite:///PATH`` (its directory creatable and
    writable) or a server URL SQLAlchemy knows (``postgresql://user:password@host:5432/db``).

    Only the text is checked; :func:`check_storage_reachable` tries the server."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    hint = "give sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        _fail(f"is not a database URL: {text!r}; {hint}")
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            # Workers are separate processes and the study must outlive the command.
            _fail(f"needs a database file, got {text!r}; {hint}")
        _check_creatable(text, Path(url.database).parent)  # as the sweep opens it: no ~ expansion
        return text
    if backend in _POSTGRES:
        if not url.database:  # no host is fine: libpq then uses the local socket
            _fail(f"needs a database name, got {_hide(text)!r}; {hint}")
        return text
    try:
        url.get_dialect()  # another backend SQLAlchemy knows (mysql, ...): fine
    except NoSuchModuleError:
        _fail(f"names an unknown database {backend!r}: {_hide(text)!r}; {hint}")
    return text


def _hide(text: str) -> str:
    """The URL with its password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(text).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return text


def check_storage_reachable(text: str, *, timeout: float = 10.0, option: str = "--storage") -> None:
    """Connect once to a server storage (never to SQLite: that would create the file) and
    raise :class:`CommandError` within about ``timeout`` seconds if it cannot be reached."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    url = make_url(text)
    if url.get_backend_name() == "sqlite":
        return
    if url.get_backend_name() in _POSTGRES:
        from optimlab.sweep.runner import _driver

        url = make_url(_driver(text))  # the driver the sweep itself will use
    connect_args = {"connect_timeout": max(1, int(timeout))} if url.get_backend_name() in (*_POSTGRES, "mysql") else {}
    try:
        engine = create_engine(url, connect_args=connect_args)
    except Exception as err:  # noqa: BLE001 - a missing driver, say which URL needed it
        raise CommandError(f"{option} {_hide(text)!r}: {_first_line(err)}") from err
    try:
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001 - the driver's own error types differ
        raise CommandError(f"{option} {_hide(text)!r}: cannot connect: {_first_line(err)}") from err
    finally:
        engine.dispose()


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
