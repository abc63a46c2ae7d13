"""optimlab.optim._native: the cache of compiled libraries never hands out a library cut short
(a crash or full disk mid-write, a partial copy): dlopen maps one, and the process dies of
SIGBUS on its first call."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from optimlab.optim import _native
from tests.optim_cases import seed_kernel_cache, stepping_script

needs_cc = pytest.mark.skipif(_native.compiler("c") is None, reason="no C compiler")
SOURCE = b"int ol_answer(void) { return 42; }\nstatic const char pad[20000] = {1};\nconst char *ol_pad(void) { return pad; }\n"


def _build(cache):
    return _native.build(SOURCE, cache, prefix="optimlab_test", language="c",
                         flag_sets=[["-O1", "-fPIC", "-shared"]], what="a test library")


@needs_cc
@pytest.mark.parametrize("cut", ["a page", "half", "one byte", "the header"])
def test_a_cached_library_cut_short_is_rebuilt(tmp_path, cut):
    path = _build(tmp_path)
    size = path.stat().st_size
    assert _native.intact(path)
    os.truncate(path, {"a page": 4096, "half": size // 2, "one byte": size - 1, "the header": 40}[cut])
    assert not _native.intact(path)
    again = _build(tmp_path)
    assert again == path and again.stat().st_size == size and _native.intact(again)
    assert ctypes.CDLL(str(again)).ol_answer() == 42


@needs_cc
def test_optimizers_step_as_before_with_cached_libraries_cut_short(tmp_path):
    """The pointer gatherer and the layout guards cut short (the kernels' library goes through the
    same ``_native.build``, tested above; its rebuild takes seconds more)."""
    script = stepping_script("RMSprop", (40, 3), 3,
                             "opt.path_for(0), [c.__name__ for c in _layout._guards()], _pointers.available()")
    seed_kernel_cache(tmp_path)  # (the first run builds nothing; the second rebuilds all)
    env = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path)}
    runs = []
    for cut in (False, True):
        if cut:
            libraries = sorted(tmp_path.glob("optimlab_pointers_*.so")) + sorted(tmp_path.glob("optimlab_guards_*.so"))
            assert libraries  # (the pointer gatherer and, with torch's headers, the guards)
            for lib in libraries:
                os.truncate(lib, 4096)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, (cut, proc.returncode, proc.stderr[-2000:])
        runs.append(proc.stdout.splitlines())
    assert runs[0] == runs[1]  # (rebuilt: same paths, same bits)
    assert all(_native.intact(lib) for lib in tmp_path.glob("*.so"))
