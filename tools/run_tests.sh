#!/usr/bin/env bash
# The test command of README.md: sets up .venv if needed, then runs the whole suite on 2 workers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(bash "$root/tools/setup_env.sh")"
cd "$root"
# One BLAS/torch thread per worker: two workers already fill a 2-core machine.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MPLBACKEND=Agg
exec "$python" -m pytest -n "${SPKCAUSAL_TEST_WORKERS:-2}" "$@"
