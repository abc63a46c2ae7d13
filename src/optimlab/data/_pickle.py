"""The ``mnist.pkl.gz`` pickle, read safely.

Unpickling runs code named by the file, so two locks guard it:

1. ``load_pickle_source`` checks the SHA-256 of the compressed bytes against the
   pinned digest *before* decompressing or unpickling anything;
2. ``RestrictedUnpickler`` resolves only the three numpy names needed to
   rebuild plain arrays (``_reconstruct``, ``ndarray``, ``dtype``) and refuses
   every other global -- ``os.system``, ``builtins.eval``, anything -- as well as
   object dtypes (which could smuggle arbitrary Python objects).
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from optimlab.data._idx import VerificationError, gunzip, sha256
from optimlab.data._registry import IMAGE_SHAPE, PickleSource

try:  # numpy >= 2 keeps it in numpy._core; the pickle names the old path
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import _reconstruct


def _dtype(obj: object, align: bool = False, copy: bool = False) -> np.dtype:
    dt = np.dtype(obj, align, copy)  # type: ignore[call-overload]
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dt!r} refused")
    return dt


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays of plain dtypes and nothing else."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle") from None

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed in a data pickle")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` with ``RestrictedUnpickler``.

    ``encoding="latin1"`` because the classic file is a Python 2 pickle whose
    array buffers are byte strings.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _to_uint8(images: np.ndarray, scale: int, what: str) -> np.ndarray:
    if images.dtype.kind != "f":
        raise VerificationError(f"{what}: expected float images, got {images.dtype}")
    # float32 is exact for the power-of-two scale of mnist.pkl.gz (and half the
    # memory of float64); a scale where it is not exact fails the check below.
    scaled = images.astype(np.float32, copy=False) * np.float32(scale)
    rounded = np.rint(scaled)
    # The stored floats are byte / scale exactly; anything else is not our file.
    if not np.array_equal(scaled, rounded) or rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255:
        raise VerificationError(f"{what}: pixel values are not bytes / {scale}")
    return rounded.astype(np.uint8).reshape(len(images), *IMAGE_SHAPE)


def arrays_from_pickle(obj: object, scale: int) -> dict[str, np.ndarray]:
    """The four official arrays (uint8 images, uint8 labels) from a 3-split pickle.

    The pickle's train + valid, concatenated in order, is the official training set.
    """
    ok = (
        isinstance(obj, tuple) and len(obj) == 3
        and all(isinstance(s, tuple) and len(s) == 2 for s in obj)
        and all(isinstance(a, np.ndarray) for s in obj for a in s)
    )
    if not ok:
        raise VerificationError("pickle is not ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    (tx, ty), (vx, vy), (sx, sy) = obj  # type: ignore[misc]
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    for what, x, y in (("train", tx, ty), ("valid", vx, vy), ("test", sx, sy)):
        if x.ndim != 2 or x.shape[1] != pixels or y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise VerificationError(f"{what} split has images {x.shape} {x.dtype}, labels {y.shape} {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() > 255):
            raise VerificationError(f"{what} labels out of byte range")
    return {
        "train_images": np.concatenate([_to_uint8(tx, scale, "train"), _to_uint8(vx, scale, "valid")]),
        "train_labels": np.concatenate([ty, vy]).astype(np.uint8),
        "test_images": _to_uint8(sx, scale, "test"),
        "test_labels": sy.astype(np.uint8),
    }


def load_pickle_source(data: bytes, source: PickleSource) -> dict[str, np.ndarray]:
    """Verify the pickle's compressed bytes, then unpickle them restrictedly.

    Raises VerificationError (nothing unpickled) when the digest differs.
    """
    if len(data) > source.max_size:
        raise VerificationError(f"{source.filename} is {len(data):,} bytes, more than expected")
    got = sha256(data)
    if got != source.sha256:
        raise VerificationError(
            f"SHA-256 mismatch for {source.filename}: {got[:16]}..., expected {source.sha256[:16]}...; not unpickled"
        )
    raw = gunzip(data, source.max_unpacked)
    try:
        obj = restricted_loads(raw)
    except Exception as exc:  # a verified file never gets here; any failure is 'not our file'
        raise VerificationError(f"{source.filename}: {exc}") from None
    return arrays_from_pickle(obj, source.scale)
