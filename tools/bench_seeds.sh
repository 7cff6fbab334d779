#!/usr/bin/env bash
# bench_seeds.sh [--seeds "0 1 2 3 4"] [recipes/mini/run.sh options ...]: the demo over several training seeds,
# and the answer to its question in one table.
#
#   bash tools/bench_seeds.sh                                  5 seeds, outputs under demo/ (about 5x the demo)
#   bash tools/bench_seeds.sh --seeds "0 1" --tiny true --out /tmp/b    a quick check of the plumbing
#
# Runs recipes/mini/run.sh --seeds SEEDS (every other option passes through; seeds already trained are kept,
# so a re-run adds only the missing ones), then `spkcausal report` over Baseline (aam) and De-confound (cnaam),
# plain and TDE rows, into OUT/exp/bench_seeds/report.md: every figure as mean ± std over the seeds, and the
# differences De-confound - Baseline and De-confound-TDE - De-confound (held-out-speaker EER, seen-speaker
# EER by shot group, accuracy by shot group) as the mean of the per-seed differences with a 95% Student-t
# interval over seeds; * marks an interval that excludes 0.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seeds="0 1 2 3 4"
out="$root/demo"
tiny=false
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --seeds=*) seeds=${1#*=}; shift ;;
    --out) out=$2; pass+=("$1" "$2"); shift 2 ;;
    --out=*) out=${1#*=}; pass+=("$1"); shift ;;
    --tiny) tiny=$2; pass+=("$1" "$2"); shift 2 ;;
    --tiny=*) tiny=${1#*=}; pass+=("$1"); shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ "$(echo "$seeds" | wc -w)" -ge 2 ] || { echo "bench_seeds.sh: give at least two seeds" >&2; exit 1; }
[ "$tiny" = true ] && out="$out-tiny"   # as recipes/mini/run.sh names it

SECONDS=0
bash "$root/recipes/mini/run.sh" --seeds "$seeds" "${pass[@]}"
. "$root/recipes/common/path.sh" > /dev/null
exps=()
for s in aam cnaam; do for k in $seeds; do exps+=("$out/exp/${s}_seed$k"); done; done
spkcausal report "${exps[@]}" --variants cosine tde --baseline aam --out "$out/exp/bench_seeds" \
  --caption "The demo over training seeds $seeds (corpus fixed: synth seed 0)."
echo "bench_seeds.sh: $(echo "$seeds" | wc -w) seeds in ${SECONDS}s; table: $out/exp/bench_seeds/report.md"
