"""The on-disk cache: one uint8 ``.npz`` per dataset, written atomically, verified on read.

The cache holds the four official arrays (not a split), so a different
``val_size`` never needs a rebuild. On read, every array is checked against
the pinned content digests of the registry -- the same table the raw files
are checked against -- so a truncated, edited or stale cache is detected and
rebuilt rather than trusted.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from optimlab.data._idx import VerificationError, check_array
from optimlab.data._registry import DatasetSpec

ENV_VAR = "OPTIMLAB_DATA"
FORMAT = 1  # bump when the layout of the .npz changes
_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


def default_cache_dir() -> Path:
    """``$OPTIMLAB_DATA``, else ``$XDG_CACHE_HOME/optimlab/data``, else ``~/.cache/optimlab/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "optimlab" / "data"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache directory to use: the argument if given, else the default."""
    if cache_dir is None:
        return default_cache_dir()
    if not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir):
        raise ValueError(f"cache_dir={cache_dir!r} is not a directory path")
    return Path(cache_dir).expanduser()


def cache_path(spec: DatasetSpec, cache_dir: Path) -> Path:
    """Where the cache file of ``spec`` lives inside ``cache_dir``."""
    return cache_dir / f"{spec.name}-v{FORMAT}.npz"


def write_cache(path: Path, arrays: dict[str, np.ndarray], source: str) -> None:
    """Write the arrays to ``path`` atomically: temp file in the same directory,
    fsync, then ``os.replace`` -- an interrupted write leaves no partial cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # Uncompressed: uint8 is already 4x smaller than float32, and zlib
            # would cost ~0.3 s on every load and ~2 s on every write for 45%.
            np.savez(fh, source=np.array(source), **{r: arrays[r] for r in _ROLES})
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache is not a secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable; not possible on every platform.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def read_cache(path: Path, spec: DatasetSpec) -> tuple[dict[str, np.ndarray], str]:
    """The verified arrays and recorded source from the cache file at ``path``.

    Raises FileNotFoundError when absent and VerificationError when the file is
    unreadable or its contents differ from the pinned digests.
    """
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        # allow_pickle=False: a cache file is data only, never code.
        with np.load(path, allow_pickle=False) as z:
            arrays = {r: z[r] for r in _ROLES}
            source = str(z["source"]) if "source" in z.files else "unknown"
    except Exception as exc:  # whatever is wrong with it, the answer is: rebuild
        raise VerificationError(f"unreadable cache file ({type(exc).__name__}: {exc})") from None
    for role in _ROLES:
        check_array(arrays[role], spec.file(role))
    return arrays, source
