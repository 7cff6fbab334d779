#!/usr/bin/env bash
# Create (or reuse) .venv at the repository root with spkcausal and its pinned stack installed.
# Re-installs only when setup.py changed since the last install, or when an extra is asked for that is not
# installed yet. Prints the venv's python path.
#
#   bash tools/setup_env.sh              the dev extra (tests, ruff, import-linter): what the recipes and tests use
#   bash tools/setup_env.sh dev,docs     also the documentation site's tools (mkdocs, .ci/run)
#
# The installer: uv when it is on PATH (the same pins from setup.py, several times faster than pip); else uv
# pip-installed into the new venv first (SPKCAUSAL_INSTALLER=uv-bootstrap, the default then), falling back to
# pip when that fails; SPKCAUSAL_INSTALLER=pip forces pip. Every way installs `pip install -e .[EXTRAS]`'s requirements, nothing else.
#
# SPKCAUSAL_PYTHON=/path/to/python: your own environment (conda, a cluster module, the interpreter running the
# test suite), used as it is: nothing is created or installed, it only has to import spkcausal. SPKCAUSAL_VENV
# names a venv that this script manages (creates, installs into) in place of the repository's .venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${SPKCAUSAL_PYTHON:-}" ]; then
  if ! "$SPKCAUSAL_PYTHON" -c "import spkcausal" 2>/dev/null; then
    echo "SPKCAUSAL_PYTHON=$SPKCAUSAL_PYTHON: that interpreter cannot import spkcausal; install it there" \
      "(pip install -e $root) or unset SPKCAUSAL_PYTHON to use the repository's .venv" >&2
    exit 1
  fi
  echo "$SPKCAUSAL_PYTHON"
  exit 0
fi
venv="${SPKCAUSAL_VENV:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
extras="${1:-dev}"
installer="${SPKCAUSAL_INSTALLER:-auto}"
if [ "$installer" = auto ]; then
  # uv-bootstrap when uv is not on PATH: pip-installing uv itself takes seconds and uv then installs the stack
  # several times faster than pip (docs/recipes.md); a registry without uv falls back to pip below.
  if command -v uv >/dev/null 2>&1; then installer=uv; else installer=uv-bootstrap; fi
fi
stamp="$venv/.spkcausal-installed"
want="$(sha256sum "$root/setup.py" | cut -c1-16)"
# the stamp: "<setup.py hash> <extra,extra,...>"; an install covers the extras asked for and those it had
have="" have_extras=""
[ ! -f "$stamp" ] || read -r have have_extras < "$stamp" || true
[ -z "$have" ] || [ -n "$have_extras" ] || have_extras=dev  # a stamp of the one-extra days: dev
[ "$have" = "$want" ] || have_extras=""
all="$(printf '%s\n' ${extras//,/ } ${have_extras//,/ } | sort -u | paste -sd, -)"
if [ -x "$venv/bin/python" ] && [ "$all" = "$have_extras" ] && "$venv/bin/python" -c "import spkcausal" 2>/dev/null
then
  echo "$venv/bin/python"
  exit 0
fi
echo "setting up $venv with $installer (first run takes a minute or two) ..." >&2
if [ "$installer" = uv ]; then
  # --seed: pip inside the venv as well, so `.venv/bin/pip install ...` works as in a pip-made venv
  [ -x "$venv/bin/python" ] || uv venv -q --seed --python "$py" "$venv" >&2
  uv pip install -q --python "$venv/bin/python" -e "$root[$all]" >&2
else
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv" >&2
  if [ "$installer" = uv-bootstrap ] && "$venv/bin/python" -m pip install -q uv >&2; then
    "$venv/bin/uv" pip install -q --python "$venv/bin/python" -e "$root[$all]" >&2
  else
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$root[$all]" >&2
  fi
fi
echo "$want $all" > "$stamp"
echo "$venv/bin/python"
