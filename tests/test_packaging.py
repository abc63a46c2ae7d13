"""A built wheel carries every file the package reads at run time, not only its .py files."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is not installed")
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_wheel_holds_every_source_file(tmp_path):
    """Built from the tracked files alone, as from a fresh clone (a local build's egg-info lists
    the files it saw). The kernels' C runtime was left out: an installed optimlab had no kernels."""
    tree = tmp_path / "tree"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tracked = [name for name in tracked.decode().split("\0") if name and (ROOT / name).is_file()]
    for name in tracked:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path / "out"), str(tree)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel, = (tmp_path / "out").glob("optimlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {name[len("src/"):] for name in tracked if name.startswith("src/optimlab/")}
    assert any(name.endswith(".c") for name in expected)
    assert sorted(expected - names) == []
