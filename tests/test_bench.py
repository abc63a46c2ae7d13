"""The benchmark scripts run, and the state table measures what each optimizer keeps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optimlab.optim as oo

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_state_table_covers_every_optimizer_with_measured_bytes():
    out = run("modern_step.py", "--state-only")
    rows = {(m[1], m[2]): float(m[3]) for m in re.finditer(r"^(torch|keras)\s+(\S+)\s+([\d.]+)", out, re.M)}
    assert {name for conv, name in rows if conv == "torch"} == set(oo.available())
    assert {name for conv, name in rows if conv == "keras"} == set(oo.available("keras"))
    # two float32 tensors per parameter (plus 0-dim counters), one, none, or factored
    assert 8.0 <= rows["torch", "adam"] < 8.01 and rows["keras", "adam"] == 8.0
    assert rows["torch", "sgd"] == 0.0 and rows["torch", "lion"] == 4.0
    assert rows["torch", "lookahead"] == 12.0  # Adam's two buffers and the slow weights
    assert rows["torch", "adafactor"] < 0.2  # row and column statistics instead of a full second moment


def test_step_benchmarks_run_in_quick_mode():
    out = run("optim_step.py", "--quick", "--only", "Adam,RMSprop", "--case", "small")
    assert re.search(r"^Adam\s+28\s", out, re.M) and re.search(r"^RMSprop\s+20\s", out, re.M)
    out = run("modern_step.py", "--quick", "--only", "Lion", "--case", "small")
    assert re.search(r"^Lion\s+20\s", out, re.M)


# The CUDA blocks' code, run on the CPU with torch.cuda answering as a GPU would: the machines
# the suite runs on have none, and bench/cuda_check.sh must work the first time it meets one.
_AS_IF_CUDA = """
import runpy, sys, torch
sys.path.insert(0, {bench!r})
import optim_step
torch.cuda.is_available = lambda: True
torch.cuda.get_device_name = lambda *a: "simulated GPU"
torch.cuda.synchronize = lambda *a: synced.append(1)
synced = []
real_use = optim_step.use_device
gpu = [False]
def use_device(name):
    gpu[0] = name == "cuda"
    return real_use("cpu")
optim_step.use_device = use_device
optim_step.on_gpu = lambda: gpu[0]
sys.argv = [{script!r}] + {args!r}
if {script!r} == "modern_step.py":
    import modern_step
    modern_step.main(sys.argv[1:])
else:
    optim_step.main(sys.argv[1:])
print("synchronized", len(synced))
"""


def run_as_if_cuda(script: str, *args: str) -> str:
    code = _AS_IF_CUDA.format(bench=str(BENCH), script=script, args=list(args))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_cuda_blocks_run_and_judge_only_the_first_target():
    out = run_as_if_cuda("optim_step.py", "--device", "cuda", "--quick", "--steps", "12", "--only", "Adam,NAdam",
                         "--case", "small", "--threads", "1,2")  # (12 steps: more than a smoke run's, judged)
    assert "CUDA: simulated GPU" in out and "on simulated GPU ===" in out and "thread" not in out.split("CUDA:")[1]
    assert out.count("=== case small") == 1  # one block on the GPU, whatever --threads says
    assert "torch default (its foreach path)" in out
    assert re.search(r"^Adam\s+28\s.*\s(ok|ok \(noise\)|SLOWER)$", out, re.M) and re.search(r"^NAdam\s+28\s", out, re.M)
    assert "target: default <= 1.0x torch's fastest" in out and "LOW-BW" not in out and "NOT-HALF" not in out
    assert int(out.rsplit("synchronized", 1)[1]) > 2 * 12 * 6  # before and after every timed step
    out = run_as_if_cuda("modern_step.py", "--device", "cuda", "--quick", "--only", "Lion,keras_adam", "--case", "small")
    assert "on simulated GPU ===" in out and re.search(r"^Lion\s+20\s", out, re.M)
    assert re.search(r"^keras Adam\s+28\s", out, re.M)


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here (bench/cuda_check.sh runs it)")


@no_gpu
def test_device_cuda_without_a_gpu_is_refused():
    for script in ("optim_step.py", "modern_step.py"):
        proc = subprocess.run([sys.executable, str(BENCH / script), "--device", "cuda"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr


@no_gpu
def test_cuda_check_without_a_gpu_says_so_and_writes_its_environment(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "cuda_check.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = (tmp_path / "env.txt").read_text()
    assert f"torch {torch.__version__}" in text and "no CUDA device" in text
    assert not (tmp_path / "summary.txt").exists()  # no stage ran
