#!/usr/bin/env bash
# The GPU checks in one run (issue #16, item 4), for a machine with CUDA and no network:
#   1. the CUDA tests: every implementation of every registered optimizer against its readable
#      rule on CUDA tensors (the "cuda" cases of test_optim_conformance.py), the default path on
#      CUDA (test_default_path.py's "cuda" tests) and all of test_train_device.py;
#   2. the CUDA blocks of both step benchmarks (bench/optim_step.py, bench/modern_step.py).
#
#   bench/cuda_check.sh --fetch-wheels   where pip reaches PyPI: into .whl/, the tests' pure-Python
#                                        oracles (pins from pyproject.toml's test extra) and
#                                        pytest with its dependencies (this environment's versions)
#   bench/cuda_check.sh                  on the GPU machine, from anywhere: python3 (or $PYTHON)
#                                        must hold torch with CUDA; .whl/ (ignored by git: carry
#                                        it) is installed to a scratch folder first, pytest's
#                                        wheels only where python3 has no pytest
#
# Logs, the pytest report and summary.txt go to $OUT (relative to the caller's directory; else
# cuda-check/ in the repository). Budgets in seconds, each stage stopped at its own (SIGINT:
# pytest still writes its report): TESTS_S (240), BENCH_S (120 per script). Exit status: 0 if
# every stage passed, 2 without a CUDA device, else 1 (an oracle missing: before any stage).
set -uo pipefail
out=$(realpath -m "${OUT:-$(dirname "$0")/../cuda-check}")
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(realpath -ms "$PY")  # (a path: resolved before the cd, as $OUT)
cd "$(dirname "$0")/.."
ORACLES="lion_pytorch schedulefree pytorch_optimizer"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    pins=$("$PY" - <<'EOF'
import re, tomllib
from importlib.metadata import version
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
print(" ".join(d for d in extra if re.match(r"(lion-pytorch|schedulefree|pytorch-optimizer)==", d)))
print(" ".join(f"{n}=={version(n)}" for n in ("pytest", "pluggy", "iniconfig", "packaging", "pygments")))
EOF
) || exit 1
    rm -rf .whl && mkdir -p .whl/pytest  # (two versions of one package would stop the install)
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .whl $(sed -n 1p <<<"$pins") &&
        exec "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .whl/pytest $(sed -n 2p <<<"$pins")
    exit 1
fi

mkdir -p "$out"
rm -f "$out"/{env,summary,tests,optim_step,modern_step}.txt "$out/tests.xml"  # (no stale results)
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
wheels=(.whl/*.whl)
[[ -e ${wheels[0]} ]] || wheels=()
"$PY" -c "import pytest" 2>/dev/null || wheels+=(.whl/pytest/*.whl)
if (( ${#wheels[@]} )); then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "${wheels[@]}" \
        || echo "warning: the wheels in .whl/ did not install"
fi
# (the image's pytest plugins are not needed, and may not suit a carried pytest)
export PYTHONPATH="$PWD/src:$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch PYTHONUNBUFFERED=1 \
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1

if ! "$PY" -c "import torch" 2>"$out/env.txt"; then
    echo "$PY cannot import torch (see $out/env.txt): set PYTHON to the Python that holds CUDA torch"
    exit 1
fi
"$PY" - <<'EOF' 2>&1 | tee "$out/env.txt"
import os, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{os.cpu_count()} CPUs")
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: nothing to check here" | tee -a "$out/env.txt"
    exit 2
fi
# Without the oracles test_optim_conformance.py would be skipped whole, and the run look green.
for module in pytest $ORACLES; do
    if ! error=$("$PY" -c "import $module" 2>&1); then
        echo "cannot import $module: ${error##*$'\n'}" | tee -a "$out/env.txt"
        echo "(the tests need pytest and the oracles: run bench/cuda_check.sh --fetch-wheels where PyPI is" \
             "reachable and bring .whl/ along; a dependency they lack must be installed there)" | tee -a "$out/env.txt"
        exit 1
    fi
done

status=0
stage() {  # stage NAME SECONDS COMMAND...: run it under its budget, log it, note how it ended
    local name=$1 budget=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (at most ${budget} s): $*"
    timeout -s INT --kill-after=20 "$budget" "$@" 2>&1 | tee "$out/$name.txt"
    rc=${PIPESTATUS[0]}
    local note=""
    [[ $rc == 124 || $rc == 137 ]] && note=" (stopped at its budget: what it printed is partial)"
    echo "$name: exit $rc after $((SECONDS - start)) s$note" | tee -a "$out/summary.txt"
    [[ $rc == 0 ]] || status=1
}

stage tests "${TESTS_S:-240}" "$PY" -m pytest -v --tb=short -p no:cacheprovider -rfEs \
    --junitxml="$out/tests.xml" tests/test_optim_conformance.py tests/test_default_path.py \
    tests/test_train_device.py -k "cuda or test_train_device"
stage optim_step "${BENCH_S:-120}" "$PY" bench/optim_step.py --device cuda
stage modern_step "${BENCH_S:-120}" "$PY" bench/modern_step.py --device cuda
grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$out/tests.txt" | tail -n 1 | sed 's/^/tests: /' \
    | tee -a "$out/summary.txt"
exit $status
