#!/usr/bin/env bash
# bench_seeds.sh [--seeds "0 1 2 3 4"] [recipes/mini/run.sh options ...]: the demo over several training seeds,
# and the answer to its question in one table.
#
#   bash tools/bench_seeds.sh                                  5 seeds, outputs under demo/ (about 5x the demo)
#   bash tools/bench_seeds.sh --seeds "0 1" --tiny true --out /tmp/b    a quick check of the plumbing
#
# Runs recipes/mini/run.sh --seeds SEEDS (every other option passes through, --systems too; seeds already
# trained are kept, so a re-run adds only the missing ones; --report-only skips it), then `spkcausal report` over
# the runs `spkcausal plan` names for the systems (default: the demo's Baseline aam, De-confound cnaam and their
# +LM runs; a decoupled system such as aam+ncm appears in the identification table, its verification rows being
# its base's), rows cosine and TDE, and the full back-end (AS-norm + calibration,
# AS-norm + QMF), into OUT/exp/bench_seeds/report.md: every figure as mean ± std over the seeds, and the
# differences De-confound - Baseline, De-confound-TDE - De-confound, +LM - its base, QMF - calibration
# (held-out-speaker EER, seen-speaker EER by shot group, accuracy by shot group, Cllr / actDCF) as the mean of
# the per-seed differences with a 95% Student-t interval over seeds; * marks an interval that excludes 0.
# --protocol lt [--imbalance R]: the long-tail protocol (docs/recipes.md); the baseline's balanced-control runs
# join the report, which then adds the "Tail cost" table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
first_word() { echo "$1" | awk '{print $1; exit}'; }
seeds="0 1 2 3 4"
out="$root/demo"
tiny=false
systems="aam cnaam aam+lm cnaam+lm"
protocol=""
imbalance=""
report_only=false
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --seeds=*) seeds=${1#*=}; shift ;;
    --out) out=$2; pass+=("$1" "$2"); shift 2 ;;
    --out=*) out=${1#*=}; pass+=("$1"); shift ;;
    --tiny) tiny=$2; pass+=("$1" "$2"); shift 2 ;;
    --tiny=*) tiny=${1#*=}; pass+=("$1"); shift ;;
    --systems) systems=$2; shift 2 ;;
    --systems=*) systems=${1#*=}; shift ;;
    --protocol) protocol=$2; pass+=("$1" "$2"); shift 2 ;;   # lt: also the baseline's balanced control
    --imbalance) imbalance=$2; pass+=("$1" "$2"); shift 2 ;;
    --report-only) report_only=true; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ "$(echo "$seeds" | wc -w)" -ge 2 ] || { echo "bench_seeds.sh: give at least two seeds" >&2; exit 1; }
[ "$tiny" = true ] && out="$out-tiny"   # as recipes/mini/run.sh names it
if [ "$tiny" = true ]; then imbalance=8; fi  # --tiny sets its own imbalance, as in run.sh
[ -z "$protocol" ] || out="$out-lt${imbalance:-30}"

SECONDS=0
[ "$report_only" = true ] || bash "$root/recipes/mini/run.sh" --seeds "$seeds" --systems "$systems" "${pass[@]}"
. "$root/recipes/common/path.sh" > /dev/null
base=$(first_word "$systems")
[ -z "$protocol" ] || systems="$systems $base+control"
exps=()
# shellcheck disable=SC2086
for name in $(spkcausal plan $systems --seeds $seeds --field name); do exps+=("$out/exp/$name"); done
base=$(basename "$base" .yaml)
spkcausal report "${exps[@]}" --variants cosine tde asnorm_cal asnorm_qmf tde_asnorm_cal tde_asnorm_qmf \
  --baseline "$base" --out "$out/exp/bench_seeds" \
  --caption "The demo over training seeds $seeds (corpus fixed: synth seed 0)."
echo "bench_seeds.sh: $(echo "$seeds" | wc -w) seeds in ${SECONDS}s; table: $out/exp/bench_seeds/report.md"
