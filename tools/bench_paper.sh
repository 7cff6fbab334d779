#!/usr/bin/env bash
# bench_paper.sh [--seeds "0 1 2"] [--out DIR] [--oltr true|false] [recipes/mini/run.sh options]: the paper's
# comparison for speakers (docs/demo.md, "The paper's table"), reproducibly.
#
#   bash tools/bench_paper.sh                          3 seeds of every system of the paper's two tables
#   bash tools/bench_paper.sh --seeds "0" --tiny true --out /tmp/p     the plumbing
#
# 1. The demo corpus (recipes/mini/run.sh), stages 1-7, for the systems that stand for the paper's rows
#    (docs/causal.md, "The paper's rows"): aam (Baseline = Decouple-Joint) with its decoupled classifiers
#    aam+ncm / aam+crt / aam+tau_norm / aam+lws, focal, cnaam (De-confound, K = 2) and cnaam_k1, Cosine and Capsule
#    with K = 1 / 2 (conf/paper/), each Causal Norm system also with TDE (stage 6); with --oltr true (default when
#    conf/oltr.yaml exists) also oltr and aam+oltr. Two recipe processes share the systems (one per core).
# 2. `spkcausal report --paper-table` over all of them: OUT/exp/paper/paper_table.md, and the usual report with
#    the differences from the baseline (OUT/exp/paper/report.md).
# Runs that are done are kept (every stage has its marker), so a re-run adds only what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seeds="0 1 2"
out="$root/demo"
oltr=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --oltr) oltr=$2; shift 2 ;;
    --out) out=$2; pass+=("$1" "$2"); shift 2 ;;
    --tiny) [ "$2" = true ] && out="$out-tiny"; pass+=("$1" "$2"); shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
conf="$root/recipes/mini/conf"
[ -n "$oltr" ] || { [ -f "$conf/oltr.yaml" ] && oltr=true || oltr=false; }
part_a="aam aam+ncm aam+crt aam+tau_norm aam+lws cnaam paper/cosine_k2 paper/capsule_k2"
part_b="$conf/lt/focal.yaml paper/cnaam_k1 paper/cosine_k1 paper/capsule_k1"
[ "$oltr" != true ] || part_b="$part_b oltr"
SECONDS=0
bash "$root/recipes/mini/run.sh" --stop_stage 2 "${pass[@]}"
bash "$root/recipes/mini/run.sh" --stage 3 --stop_stage 7 --seeds "$seeds" --systems "$part_a" "${pass[@]}" \
  > "$out/bench_paper_a.log" 2>&1 &
pid_a=$!
bash "$root/recipes/mini/run.sh" --stage 3 --stop_stage 7 --seeds "$seeds" --systems "$part_b" "${pass[@]}" \
  > "$out/bench_paper_b.log" 2>&1
wait "$pid_a"
if [ "$oltr" = true ]; then  # Decouple-OLTR is built on aam's embeddings (part A)
  bash "$root/recipes/mini/run.sh" --stage 3 --stop_stage 7 --seeds "$seeds" --systems "aam aam+oltr" "${pass[@]}" \
    >> "$out/bench_paper_b.log" 2>&1
  part_b="$part_b aam+oltr"
fi
. "$root/recipes/common/path.sh" > /dev/null
exps=()
for s in $part_a $part_b; do
  s=$(basename "$s" .yaml); s=${s/+/_}
  for k in $seeds; do exps+=("$out/exp/${s}_seed$k"); done
done
spkcausal report "${exps[@]}" --paper-table --out "$out/exp/paper"
spkcausal report "${exps[@]}" --variants cosine tde --baseline aam --out "$out/exp/paper" \
  --caption "The paper's systems on the demo corpus, training seeds $seeds (corpus fixed: synth seed 0)." > /dev/null
echo "bench_paper.sh: done in ${SECONDS}s; tables: $out/exp/paper/{paper_table,report}.md"
