"""CPU training speed: keep glibc's malloc from handing big tensors back to the kernel.

A training step allocates and frees the same large tensors every step (a
conv layer's output, the max-pool gradient, the dropout mask: megabytes
each). glibc serves blocks above its mmap threshold (128 KiB, raised
dynamically to about the largest block freed) with fresh ``mmap`` pages,
and trims the heap once more than twice that sits free at its top, so every
step faults the same memory back in page by page — for the lectures' CNN
about 600 page faults per step, 10-25% of the step time on a CPU. Raising
both thresholds keeps the freed blocks in the heap for the next step (what
jemalloc, tcmalloc or a caching allocator would do).

``tune_allocator()`` is called by ``optimlab.train.fit`` and
``optimlab.models.lecture_cnn``; set ``OPTIMLAB_TUNE_MALLOC=0`` to leave
malloc alone. It only changes how much freed memory the process keeps
(at most ``trim_threshold`` at the top of the heap), never what it computes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_VAR = "OPTIMLAB_TUNE_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_done: dict[str, bool] = {}


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Serve blocks below ``mmap_threshold`` bytes from the heap and keep up to
    ``trim_threshold`` bytes free at its top. Once per process; True if applied
    (Linux with glibc, and ``$OPTIMLAB_TUNE_MALLOC`` not ``0``)."""
    if "applied" in _done:
        return _done["applied"]
    applied = False
    if os.environ.get(ENV_VAR, "1") != "0" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            gnu = ctypes.util.find_library("c") and hasattr(libc, "gnu_get_libc_version")
            if gnu:
                applied = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
                    mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
        except (OSError, AttributeError):
            applied = False
    _done["applied"] = applied
    return applied
