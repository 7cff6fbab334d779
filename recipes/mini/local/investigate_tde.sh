#!/usr/bin/env bash
# investigate_tde.sh [OUT]: after the demo (recipes/mini/run.sh --out OUT, default demo/), train the TDE
# ablations of conf/investigate/ (Causal Norm AAM with s = 8, K = 1, K = 4, and AAM with s = 8) on the same
# corpus through stages 3-7, put them in OUT/exp/report_investigate.md, and print the diagnostics of
# local/tde_diagnostics.py for the demo's and the ablations' systems. docs/demo.md quotes the output.
set -euo pipefail
mini="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$mini/../../demo}"
systems=""
for c in "$mini"/conf/investigate/*.yaml; do systems="$systems $c"; done
bash "$mini/run.sh" --out "$out" --systems "$systems" --stage 3 --stop_stage 7
. "$mini/../common/path.sh"
names=$(for c in $systems; do basename "$c" .yaml; done)
spkcausal report $(for n in cnaam $names; do echo "$out/exp/$n"; done) --out "$out/exp/investigate" \
  --variants cosine tde --caption "TDE ablations on the demo corpus (same data, network and steps as the demo)."
"$SPKCAUSAL_PY" "$mini/local/tde_diagnostics.py" "$out" aam cnaam $names
