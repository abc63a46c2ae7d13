"""Compiling and caching optimlab's small native libraries.

Three libraries are built on first use with the system compiler and cached per machine: the
generated kernels (:mod:`._fused`, C), the pointer gatherer (:mod:`._pointers`, C++) and the
layout guards (:mod:`._guards`, C++ against torch's headers).
Each is named by a hash of its source, its flags, the compiler and what else its code
depends on (``key_extra``: the CPU for ``-march=native``, the Python and torch for their headers),
compiled into a temporary file, flushed to disk and renamed into place (concurrent processes
each build and rename; one wins, all load a complete file); a cached library found cut short
(:func:`intact`: a crash or full disk mid-write, a partial copy) is rebuilt, never loaded. The cache is ``$OPTIMLAB_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/optimlab/kernels`` (default ``~/.cache/optimlab/kernels``); where it cannot
be written, a private directory under the system temp dir.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence


def cache_dir() -> Path:
    explicit = os.environ.get("OPTIMLAB_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optimlab" / "kernels"


def cpu_fingerprint() -> str:
    """What -march=native depends on: the machine and its CPU's feature flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features", "model name", "vendor_id", "cpu family", "model"):
                    parts.append(line.strip())
                elif not line.strip() and len(parts) > 2:
                    break  # the first CPU describes them all
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def compiler(language: str = "c") -> str | None:
    """The C compiler (``$CC``, else cc, gcc, clang) or, for ``"c++"``, the C++ one (``$CXX``,
    else c++, g++, clang++); None if there is none."""
    env, names = ("CC", ("cc", "gcc", "clang")) if language == "c" else ("CXX", ("c++", "g++", "clang++"))
    explicit = os.environ.get(env)
    if explicit:
        return explicit
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def private_tmp() -> Path | None:
    """A per-user directory under the system temp dir, if it is (or can be) ours alone."""
    if not hasattr(os, "getuid"):
        return None
    path = Path(tempfile.gettempdir()) / f"optimlab-kernels-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
    except OSError:
        return None
    return path if st.st_uid == os.getuid() and not st.st_mode & 0o022 else None


def _sync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def intact(path: Path) -> bool:
    """Whether a cached library is whole: for an ELF file, every loadable segment and the
    section header table lie within it (a truncated library passes ``dlopen`` and then
    kills the process with SIGBUS on first use). Files of other formats are taken as they are."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if data[:4] != b"\x7fELF":
        return len(data) > 4  # (another format: dlopen refuses what it cannot map)
    if len(data) < 52 or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    head = struct.Struct(order + ("QQ" if wide else "II"))
    if len(data) < (64 if wide else 52):
        return False
    phoff, shoff = head.unpack_from(data, 0x20 if wide else 0x1C)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 0x36 if wide else 0x2A)
    if shoff + shnum * shentsize > len(data) or phoff + phnum * phentsize > len(data):
        return False
    segment = struct.Struct(order + ("IIQQQQ" if wide else "IIIIII"))
    for k in range(phnum):
        fields = segment.unpack_from(data, phoff + k * phentsize)
        offset, filesz = (fields[2], fields[5]) if wide else (fields[1], fields[4])
        if fields[0] == 1 and offset + filesz > len(data):  # PT_LOAD
            return False
    return True


def build(source: bytes, cache: Path, *, prefix: str, language: str, flag_sets: Sequence[Sequence[str]],
          libs: Sequence[str] = (), key_extra: str = "", what: str = "the library") -> Path:
    """Compile ``source`` (or find it in ``cache``) into ``{prefix}_{hash}.so``; the path.

    ``flag_sets`` are tried in order (say, with ``-march=native``, then without) until the
    compiler takes one. Raises RuntimeError (naming ``what``) with the compiler's messages."""
    cc = compiler(language)
    if cc is None:
        raise RuntimeError(f"no {'C' if language == 'c' else 'C++'} compiler found "
                           f"(set ${'CC' if language == 'c' else 'CXX'} or install gcc)")
    errors = []
    for flags in flag_sets:
        flags = list(flags)
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(),
                                         key_extra.encode()])).hexdigest()[:24]
        name = f"{prefix}_{key}.so"
        for directory in (cache, None):  # an unwritable cache: a private temporary one
            directory = directory or private_tmp()
            if directory is None:
                continue
            target = directory / name
            if target.exists():
                if intact(target):
                    return target
                try:  # (cut short: a crash or a full disk mid-write, a partial copy; loading it would crash)
                    target.unlink()
                except OSError:
                    continue
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
            except OSError as err:
                errors.append(f"{directory}: {err}")
                continue
            os.close(fd)
            try:
                proc = subprocess.run([*cc.split(), *flags, "-x", language, "-o", tmp, "-", *libs], input=source,
                                      capture_output=True, timeout=300)
                if proc.returncode == 0:
                    _sync(tmp)  # (on disk before it is renamed into place: a crash leaves no short file there)
                    os.replace(tmp, target)  # atomic: a concurrent process sees all or nothing
                    return target
                errors.append(f"{cc} {' '.join(flags)}: {proc.stderr.decode(errors='replace').strip()[-2000:]}")
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(f"{cc}: {err}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            break  # the directory was fine, the compiler was not: try other flags
    raise RuntimeError(f"compiling {what} failed:\n" + "\n".join(errors))
