#!/usr/bin/env bash
# The GPU checks in one run (issue #16, item 4), for a machine with CUDA and no network:
#   1. the CUDA cases of the tests: every implementation of every registered optimizer against
#      its readable rule on CUDA tensors (test_optim_conformance.py), the default path on CUDA
#      (test_default_path.py) and training on CUDA (test_train_device.py);
#   2. the CUDA blocks of both step benchmarks (bench/optim_step.py, bench/modern_step.py).
#
#   bench/cuda_check.sh --fetch-wheels   where pip reaches PyPI: the tests' pure-Python oracles
#                                        (pins from pyproject.toml's test extra) into .whl/
#   bench/cuda_check.sh                  on the GPU machine, from anywhere: python3 (or $PYTHON)
#                                        must hold torch with CUDA; wheels in .whl/ are installed
#                                        to a scratch folder first
#
# Logs and the pytest report go to $OUT (else ./cuda-check/). Budgets in seconds, each stage
# stopped at its own: TESTS_S (240), BENCH_S (120 per script). Exit status: 0 if every stage
# passed, 2 without a CUDA device, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    pins=$("$PY" - <<'EOF'
import re, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]
print(" ".join(d for d in extra if re.match(r"(lion-pytorch|schedulefree|pytorch-optimizer)==", d)))
EOF
)
    exec "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .whl $pins
fi

out=${OUT:-cuda-check}
mkdir -p "$out"
site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" .whl/*.whl \
        || echo "warning: the wheels in .whl/ did not install; the tests that need them will skip"
fi
export PYTHONPATH="$PWD/src:$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch PYTHONUNBUFFERED=1

"$PY" - <<'EOF' 2>&1 | tee "$out/env.txt"
import os, platform, sys, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{os.cpu_count()} CPUs")
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "no CUDA device: nothing to check here" | tee -a "$out/env.txt"
    exit 2
fi

status=0
stage() {  # stage NAME SECONDS COMMAND...: run it under its budget, log it, note how it ended
    local name=$1 budget=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (at most ${budget} s): $*"
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$out/$name.txt"
    rc=${PIPESTATUS[0]}
    echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    [[ $rc == 0 ]] || status=1
}

stage tests "${TESTS_S:-240}" "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$out/tests.xml" \
    tests/test_optim_conformance.py tests/test_default_path.py tests/test_train_device.py \
    -k "cuda or train_device"
stage optim_step "${BENCH_S:-120}" "$PY" bench/optim_step.py --device cuda
stage modern_step "${BENCH_S:-120}" "$PY" bench/modern_step.py --device cuda
cat "$out/summary.txt"
exit $status
