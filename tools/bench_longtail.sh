#!/usr/bin/env bash
# bench_longtail.sh [--seeds "0 1 2 3 4"] [--out DIR] [--protocol_seeds "0 1 2"] [recipes/mini/run.sh options]:
# the long-tail benchmark of docs/demo.md ("Long-tail benchmark"), reproducibly.
#
#   bash tools/bench_longtail.sh                     5 seeds of 11 systems on the demo corpus + the protocol run
#   bash tools/bench_longtail.sh --seeds "0 1" --protocol_seeds "" --tiny true --out /tmp/b   the plumbing
#
# 1. The demo corpus (recipes/mini/run.sh, its long tail 60 .. 2 utterances over 100 speakers), stages 1-7,
#    for every system: Baseline (AAM), Re-sampling, De-confound (Causal Norm AAM), Re-weighting (effective
#    number), Focal loss, and the methods that reach the embedding (docs/causal.md): LDAM margins,
#    sub-centre AAM, feature transfer, Balanced Softmax, DRW, progressive sampling; one run per seed.
# 2. `spkcausal report` over them (rows cosine and TDE) with the paired differences from the baseline over
#    seeds (95% Student-t intervals; * = excludes 0): OUT/exp/lt_bench/report.md.
# 3. `spkcausal tail-geometry` on every system's iden-test embeddings (training speakers' held-out
#    utterances): intra-speaker spread and nearest-speaker separation by shot group, averaged over seeds:
#    OUT/exp/lt_bench/geometry.md.
# 4. The long-tail protocol (--protocol lt --imbalance 30: a balanced pool, its long-tailed subset and the
#    balanced control) for AAM, Causal Norm AAM, LDAM and Balanced Softmax over --protocol_seeds: the tail
#    cost and the share each method recovers (OUT-lt30/exp/report.md, table "Tail cost").
# 5. tools/bench_lt_step.py: each system's training step against AAM's (medians, same run).
# Runs that are done are kept (every stage has its marker), so a re-run adds only what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seeds="0 1 2 3 4"
protocol_seeds="0 1 2"
out="$root/demo"
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --protocol_seeds) protocol_seeds=$2; shift 2 ;;
    --out) out=$2; pass+=("$1" "$2"); shift 2 ;;
    --tiny) [ "$2" = true ] && out="$out-tiny"; pass+=("$1" "$2"); shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
lt="$root/recipes/mini/conf/lt"
systems="aam resample cnaam $lt/reweight.yaml $lt/focal.yaml $lt/ldam.yaml $lt/subcenter.yaml \
$lt/feature_transfer.yaml $lt/balanced_softmax.yaml $lt/drw.yaml $lt/progressive.yaml"
SECONDS=0
bash "$root/recipes/mini/run.sh" --stop_stage 7 --seeds "$seeds" --systems "$systems" "${pass[@]}"
. "$root/recipes/common/path.sh" > /dev/null
exps=() geo=()
for s in $systems; do
  s=$(basename "$s" .yaml)
  for k in $seeds; do
    exps+=("$out/exp/${s}_seed$k"); geo+=("$s=$out/exp/${s}_seed$k/emb/vox1_iden_test")
  done
done
spkcausal report "${exps[@]}" --variants cosine tde --baseline aam --out "$out/exp/lt_bench" \
  --caption "The long-tail benchmark: the demo corpus, training seeds $seeds (corpus fixed: synth seed 0)."
many=30 few=10; case " ${pass[*]} " in *" --tiny true "*) many=8 few=4 ;; esac
spkcausal tail-geometry --emb "${geo[@]}" --data "$out/data/vox1_iden_test" --train-data "$out/data/vox1_iden_train" \
  --many "$many" --few "$few" --out "$out/exp/lt_bench/geometry.json" --markdown "$out/exp/lt_bench/geometry.md"
if [ -n "$protocol_seeds" ]; then
  bash "$root/recipes/mini/run.sh" --protocol lt --imbalance 30 --seeds "$protocol_seeds" \
    --systems "aam cnaam $lt/ldam.yaml $lt/balanced_softmax.yaml" "${pass[@]}"
fi
"$SPKCAUSAL_PY" "$root/tools/bench_lt_step.py" --out "$out/exp/lt_bench/step.json"
echo "bench_longtail.sh: done in ${SECONDS}s; tables: $out/exp/lt_bench/{report,geometry}.md"
