"""IDX files: bounded gunzip, digest check, parsing, and the content digest of arrays.

The IDX format (LeCun's, used by MNIST and Fashion-MNIST): two zero bytes, a
type code (0x08 = unsigned byte), the number of dimensions, one big-endian
uint32 per dimension, then the values in C order.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np

from optimlab.data._registry import IdxFile

GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


class VerificationError(ValueError):
    """Bytes whose SHA-256 (or structure) is not the one pinned for them."""


def sha256(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip stream, refusing to produce more than ``limit`` bytes.

    The bound stops a hostile or wrong file (a "gzip bomb") from filling memory
    before its digest can be checked.
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise VerificationError(f"decompresses to more than the expected {limit:,} bytes")
    if not d.eof:
        raise VerificationError("truncated gzip stream")
    return out


def verified_content(data: bytes, spec: IdxFile) -> bytes:
    """The decompressed IDX bytes of ``data``, verified against the pinned content digest.

    ``data`` may be one of the known ``.gz`` files, any other gzip of the same
    content (a user's own re-compression), or the uncompressed file: what is
    pinned, and checked in every case, is the content. Decompression is bounded
    by the expected size, so an unknown file cannot exhaust memory first.
    """
    if data[:2] == GZIP_MAGIC:
        try:
            content = gunzip(data, spec.size)
        except zlib.error as exc:
            raise VerificationError(f"not a valid gzip file ({exc})") from None
    else:
        content = data
    if len(content) != spec.size or sha256(content) != spec.sha256:
        got = sha256(content)
        raise VerificationError(
            f"SHA-256 mismatch for {spec.filename}: content {got[:16]}... ({len(content):,} bytes), "
            f"expected {spec.sha256[:16]}... ({spec.size:,} bytes)"
        )
    return content


def parse_idx(content: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse uncompressed IDX bytes into a uint8 array (a read-only view is copied).

    ``shape``, when given, is the shape the file must have.
    """
    if len(content) < 4 or content[:2] != b"\0\0":
        raise VerificationError("not an IDX file (bad magic number)")
    code, ndim = content[2], content[3]
    if code != _UBYTE:
        raise VerificationError(f"unsupported IDX type code 0x{code:02x} (only unsigned byte, 0x08)")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise VerificationError("truncated IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    n = int(np.prod(dims, dtype=np.int64)) if dims else 0
    if len(content) != header + n:
        raise VerificationError(f"IDX payload is {len(content) - header:,} bytes, header says {n:,}")
    if shape is not None and tuple(dims) != tuple(shape):
        raise VerificationError(f"IDX shape {tuple(dims)} differs from the expected {tuple(shape)}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx_header(shape: tuple[int, ...]) -> bytes:
    """The IDX header of a uint8 array of this shape."""
    return bytes([0, 0, _UBYTE, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of ``array`` written as an uncompressed IDX file.

    This is what ``IdxFile.sha256`` pins, so any source (IDX, pickle, cache)
    can be checked against the same table.
    """
    if array.dtype != np.uint8:
        raise VerificationError(f"expected uint8 values, got {array.dtype}")
    h = hashlib.sha256(idx_header(array.shape))
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


def check_array(array: np.ndarray, spec: IdxFile) -> None:
    """Raise VerificationError unless ``array`` is exactly the pinned content."""
    if tuple(array.shape) != tuple(spec.shape):
        raise VerificationError(f"{spec.role} has shape {tuple(array.shape)}, expected {spec.shape}")
    got = array_digest(array)
    if got != spec.sha256:
        raise VerificationError(
            f"SHA-256 mismatch for {spec.role}: {got[:16]}..., expected {spec.sha256[:16]}..."
        )
