#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a GPU machine's time is scarce; CI has none):
#
#  1. the test suite with CUDA visible: every test that trains on device "auto" trains on the
#     GPU, and the CUDA-only tests run (junit XML and the log under OUTDIR);
#  2. issue 18's streamed epoch on the GPU (pinned batches, copied without blocking) against the
#     plain lazy DataLoader: benchmarks/scale.py --device cuda.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]
#
# Environment: PYTEST_WORKERS (8, when pytest-xdist is installed), PYTEST_LIMIT_S (330: the suite's wall limit),
# PYTEST_ARGS (extra pytest arguments), SCALE_N (3000), SCALE_WORKERS (6), SKIP_SCALE=1.
set -uo pipefail
out=${1:-${OUT:-/tmp/medfuse-gpu}}
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} 2>&1 | tee "$out/gpu.txt"

par=()  # pytest-xdist, where installed (not a medfuse dependency)
python3 -c "import xdist" 2>/dev/null && par=(-n "${PYTEST_WORKERS:-8}")
t0=$(date +%s)
# shellcheck disable=SC2086
timeout "${PYTEST_LIMIT_S:-330}" python3 -m pytest -q "${par[@]}" \
    -p no:cacheprovider --continue-on-collection-errors --durations=15 --junitxml "$out/junit.xml" \
    ${PYTEST_ARGS:-} tests >"$out/pytest.log" 2>&1
echo "pytest exit $? after $(($(date +%s) - t0)) s"
grep -E "^(FAILED|ERROR)" "$out/pytest.log" | cut -c1-300
tail -3 "$out/pytest.log"

if [ "${SKIP_SCALE:-0}" != 1 ]; then
    t0=$(date +%s)
    python3 benchmarks/scale.py --device cuda --n "${SCALE_N:-3000}" \
        --workers "${SCALE_WORKERS:-6}" --threads 4 --skip-memory --json "$out/scale.json" \
        >"$out/scale.log" 2>&1
    echo "scale.py exit $? after $(($(date +%s) - t0)) s"
    tail -12 "$out/scale.log"
fi
