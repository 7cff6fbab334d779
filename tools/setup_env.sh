#!/usr/bin/env bash
# Create (or reuse) .venv at the repository root with spkcausal and its pinned stack installed.
# Re-installs only when setup.py changed since the last install. Prints the venv's python path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SPKCAUSAL_VENV:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" >&2
fi
stamp="$venv/.spkcausal-installed"
want="$(sha256sum "$root/setup.py" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c "import spkcausal" 2>/dev/null; then
  echo "setting up $venv (first run takes a minute or two) ..." >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -e "$root[dev]" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
