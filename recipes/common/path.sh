# Sourced by every recipe (after its options are parsed): the environment is set up the same way for all of
# them. tools/setup_env.sh creates the repository's .venv on a fresh clone (a minute or two), reinstalls only
# when setup.py changed, and prints the venv's python; SPKCAUSAL_VENV names another venv to use instead, and
# SPKCAUSAL_PYTHON an interpreter of your own, used as it is (nothing installed into it).
SPKCAUSAL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SPKCAUSAL_PY="$(bash "$SPKCAUSAL_ROOT/tools/setup_env.sh")"   # the interpreter that runs spkcausal (and torchrun)
export PATH="$(dirname "$SPKCAUSAL_PY"):$PATH"
echo "using $SPKCAUSAL_PY (environment ready at ${SECONDS}s)"
export PYTHONUNBUFFERED=1
