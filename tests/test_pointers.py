"""optim._pointers: data pointers gathered in C are ``Tensor.data_ptr()``'s, or the Python loop's."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import optimlab.optim as oo
from optimlab.optim import _pointers

ROOT = Path(__file__).resolve().parents[1]


def _tensors():
    base = torch.randn(1000)
    return [base, base[7:], base.view(10, 100)[2:, 3:], torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64)),
            torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.randn(()), torch.zeros(0),
            torch.randn(6).t(), torch.randn(3, dtype=torch.bfloat16)]


@pytest.fixture(params=["c", "python"])
def mode(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(_pointers, "_fn", None)
        monkeypatch.setattr(_pointers, "_tried", True)
    elif not _pointers.available():
        pytest.skip("the pointer gatherer could not be built here (no C++ compiler or Python headers)")
    return request.param


def test_the_pointers_are_data_ptrs_list_after_list(mode):
    ts = _tensors()
    lists = [ts[:4], ts[4:], (), tuple(ts[::-1])]
    got = _pointers.gather(lists)
    assert list(got) == [t.data_ptr() for lst in lists for t in lst]
    assert got.typecode == "Q"


@pytest.mark.parametrize("odd", ["sparse", "mkldnn", "number", "none"])
def test_a_tensor_without_a_data_pointer_gives_none(mode, odd):
    if odd == "mkldnn" and not torch.backends.mkldnn.is_available():
        pytest.skip("no mkldnn in this torch")
    thing = {"sparse": lambda: torch.randn(3).to_sparse(), "mkldnn": lambda: torch.randn(3).to_mkldnn(),
             "number": lambda: 1.0, "none": lambda: None}[odd]()
    assert _pointers.gather([_tensors(), [torch.zeros(2), thing]]) is None


def test_a_kernel_step_is_the_same_with_either_gatherer(monkeypatch):
    """The default (kernel) steps of RMSprop and SGD, C-gathered and Python-gathered pointers: same bits."""
    if not _pointers.available():
        pytest.skip("the pointer gatherer could not be built here")
    results = []
    for python in (False, True):
        if python:
            monkeypatch.setattr(_pointers, "_fn", None)
        gen = torch.Generator().manual_seed(0)
        ps = [torch.randn(s, generator=gen).requires_grad_() for s in [(3, 5), (7,), (2, 3, 4)]]
        opts = [oo.RMSprop(ps[:2], lr=1e-2), oo.SGD(ps[2:], lr=1e-2)]
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            for o in opts:
                o.step()
        assert {o.path_for(0) for o in opts} == {"fused"}
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        assert torch.equal(a, b)


_CHILD = textwrap.dedent("""
    import json, torch
    from optimlab.optim import _pointers
    ts = [torch.randn(4), torch.randn(3)[1:]]
    print(json.dumps({"available": _pointers.available(),
                      "same": list(_pointers.gather([ts])) == [t.data_ptr() for t in ts]}))
""")


@pytest.mark.parametrize("env", [{"OPTIMLAB_POINTERS": "python"}, {"CXX": "/bin/false"}])
def test_without_the_library_python_gives_the_same_pointers(tmp_path, env):
    """Forced off, or no working C++ compiler: the Python loop, silently, with the same values."""
    full = {**os.environ, "OPTIMLAB_KERNEL_CACHE": str(tmp_path), **env,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", _CHILD], env=full,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"available": False, "same": True}
