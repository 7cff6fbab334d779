# Sourced by every recipe: put the repository's .venv (tools/setup_env.sh makes it) first on PATH, unless
# SPKCAUSAL_VENV names another venv or `spkcausal` is already installed somewhere on PATH.
SPKCAUSAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_venv="${SPKCAUSAL_VENV:-$SPKCAUSAL_ROOT/.venv}"
if [ -x "$_venv/bin/spkcausal" ]; then
  export PATH="$_venv/bin:$PATH"
fi
unset _venv
if ! command -v spkcausal >/dev/null 2>&1; then
  echo "spkcausal not found: run tools/setup_env.sh (creates .venv) or install the package" >&2
  exit 1
fi
# The interpreter that runs spkcausal (torchrun and small JSON reads use it).
SPKCAUSAL_PY="$(dirname "$(command -v spkcausal)")/python"
[ -x "$SPKCAUSAL_PY" ] || SPKCAUSAL_PY=python3
export PYTHONUNBUFFERED=1
