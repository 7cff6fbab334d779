#!/usr/bin/env bash
# bench_tailcost.sh [--out DIR] [--seeds "0 1 2 3 4"] [--curve_seeds "0 1 2 3 4 5 6 7"] [--imbalances "10 30 60"]
#                   [--report-only]: what the long tail costs and what recovers it (docs/demo.md, "The tail's cost").
#
#   bash tools/bench_tailcost.sh                       everything below; hours of CPU on 2 cores
#   bash tools/bench_tailcost.sh --report-only         the tables again from the runs that exist
#
# Every run is the long-tail protocol of recipes/mini/run.sh (--protocol lt: a balanced pool of 100 speakers x 60
# utterances, its long-tailed subset at imbalance R and the balanced control, the same speakers and hours), with
# a larger evaluation set than the demo's so that one seed measures more precisely (100 held-out verification
# speakers instead of 30, 8 held-out utterances per training speaker instead of 4; the training data is the
# demo's). Runs that are done are kept (every stage has its marker), so a re-run adds only what is missing.
#
# 1. The method benchmark at R=30, from scratch, over --seeds: Baseline (AAM), Balanced Softmax, De-confound
#    (Causal Norm AAM) and the encoder-side methods (speaker-uniform episodic batches alone and + angular prototypical
#    loss, semi-siamese momentum contrast, k-positive contrast; tail-aware speed perturbation; frequency-drawn
#    episodes alone and + k-positive contrast; uniform speed perturbation and both speed perturbations with the
#    copies keeping their speaker; noise / music / babble / reverb from `spkcausal synth-aug` banks, uniform and
#    tail-aware; self-supervised pre-training (conf/encoder/ssl.yaml, per seed on the long-tailed set, no speaker
#    label; on crops alone and with the banks' noise and reverb) and the baseline trained from each
#    (conf/encoder/ssp.yaml, ssp_aug.yaml), over --curve_seeds), with the baseline's balanced control:
#    OUT/scratch-lt30/exp/bench_seeds/report.md ("Tail cost": the share each method recovers).
# 2. The tail-cost curve from scratch: the baseline and its control at every R of --imbalances over --curve_seeds;
#    at R=30 also the baseline trained 48 epochs (conf/aam48.yaml, the compute of pre-training + training) and its
#    control: OUT/tail_curve48/.
#    At 48 epochs the tail cost is larger (docs/demo.md), so the methods that moved seen Few EER or Few
#    identification at 16 epochs are measured again at 48, over --curve_seeds, in a tree of their own
#    (OUT/scratch48-lt30: `--epochs 48` for every system, the baseline's control too): Baseline (AAM), De-confound
#    (with TDE), Balanced Softmax, k-positive contrast in frequency-drawn episodes, and feature transfer (tail
#    features given the head's angular spread, Liu et al. 2020: a face-verification method for under-represented
#    identities, untried in the protocol at 16 epochs); then frequency-drawn episodes alone, to tell k-positive's
#    effect from its sampler's, and k-positive under natural sampling with two crops of each utterance in a batch
#    (sampler.views: 2), its positives without episodes. Its baseline is aam48's twin (the same configuration), a check that the 48-epoch
#    tail cost reproduces.
# 3. The fine-tuning setting: an extractor pretrained on 200 other synthetic speakers (synth seed 7, balanced,
#    30 utterances each), fine-tuned on the long-tailed set at R=30 and on its control (conf/finetune/aam_ft.yaml,
#    --init_from), over --seeds.
# 4. `spkcausal tail-curve` over 2 and 3 (with the session halves): OUT/tail_curve/tail_curve.{md,json,png};
#    `spkcausal session-halves` and `spkcausal tail-geometry` over 1: OUT/methods/; tools/bench_lt_step.py over
#    1's systems (training step against AAM's): OUT/methods/step.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/tailcost"
seeds="0 1 2 3 4"
curve_seeds="0 1 2 3 4 5 6 7"
imbalances="10 30 60"
report_only=false
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --curve_seeds) curve_seeds=$2; shift 2 ;;
    --imbalances) imbalances=$2; shift 2 ;;
    --report-only) report_only=true; shift ;;
    *) echo "bench_tailcost.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
conf="$root/recipes/mini/conf"
methods="aam $conf/lt/balanced_softmax.yaml cnaam $conf/encoder/episodic.yaml $conf/encoder/prototypical.yaml \
$conf/encoder/semi_siamese.yaml $conf/encoder/kpositive.yaml $conf/encoder/tail_speed.yaml \
$conf/encoder/episodic_natural.yaml $conf/encoder/kpositive_natural.yaml $conf/encoder/speed.yaml \
$conf/encoder/speed_keep.yaml $conf/encoder/tail_speed_keep.yaml"
evalset=(--test_speakers 100 --test_per_speaker 8)
pre="$out/pretrain/exp/aam"
ro=(); [ "$report_only" = false ] || ro=(--report-only)

SECONDS=0
. "$root/recipes/common/path.sh" > /dev/null
bash "$root/tools/bench_seeds.sh" "${ro[@]}" --protocol lt --imbalance 30 --seeds "$seeds" --out "$out/scratch" \
  --systems "$methods" "${evalset[@]}"
# noise / music / babble / reverb from synthetic banks: after the line above, so that aam and its control, trained
# there without augmentation, are kept and only these systems get the banks; then one table of every method
noise="$conf/encoder/noise.yaml $conf/encoder/tail_noise.yaml"
if [ "$report_only" = false ]; then
  spkcausal synth-aug --out "$out/aug" > /dev/null
  bash "$root/tools/bench_seeds.sh" --protocol lt --imbalance 30 --seeds "$seeds" --out "$out/scratch" \
    --systems "aam $noise" "${evalset[@]}" --musan "$out/aug/musan" --rirs "$out/aug/RIRS_NOISES"
fi
# self-supervised pre-training on the long-tailed set itself (each seed its own; crops alone, then with the banks'
# noise / reverb), then the baseline from it; after the first line, so that aam is trained (and skipped here)
# before --init_from is passed
ssp="$conf/encoder/ssp.yaml $conf/encoder/ssp_aug.yaml"
if [ "$report_only" = false ]; then
  for k in $curve_seeds; do
    for v in "" _aug; do
      s="$out/ssl/ssl${v}_seed$k" banks=()
      [ -z "$v" ] || banks=(augment.musan="$out/aug/musan" augment.rirs="$out/aug/RIRS_NOISES")
      if [ ! -f "$s/avg_model.pt" ]; then
        spkcausal train --config "$conf/encoder/ssl.yaml" --resume exp_dir="$s" \
          data.train="$out/scratch-lt30/data/lt_train" seed="$k" "${banks[@]}" > /dev/null
        spkcausal average-ckpt --exp "$s" --num 3 > /dev/null
      fi
      for r in aam aam_control; do  # --init_from reaches every system of the line: these must be trained already
        [ -f "$out/scratch-lt30/exp/${r}_seed$k/.done/3" ] || { echo "bench_tailcost.sh: ${r}_seed$k is not" \
          "trained; --init_from would start it from the self-supervised model" >&2; exit 1; }
      done
      bash "$root/recipes/mini/run.sh" --protocol lt --imbalance 30 --seeds "$k" --out "$out/scratch" \
        --systems "aam $conf/encoder/ssp$v.yaml" "${evalset[@]}" --init_from "$s/avg_model.pt"
    done
  done
fi
# the baseline at three times the training, and its control (the tail cost at 48 epochs)
bash "$root/tools/bench_seeds.sh" "${ro[@]}" --protocol lt --imbalance 30 --seeds "$curve_seeds" --out "$out/scratch" \
  --systems "$conf/aam48.yaml" "${evalset[@]}"
# the methods again at 48 epochs (after the line above, which measured the larger tail cost there)
m48="aam cnaam $conf/lt/balanced_softmax.yaml $conf/encoder/kpositive_natural.yaml $conf/lt/feature_transfer.yaml \
$conf/encoder/episodic_natural.yaml $conf/encoder/kpositive_views.yaml"
bash "$root/tools/bench_seeds.sh" "${ro[@]}" --protocol lt --imbalance 30 --seeds "$curve_seeds" --out "$out/scratch48" \
  --systems "$m48" --epochs 48 "${evalset[@]}"
methods="$methods $noise $ssp $conf/aam48.yaml"
bash "$root/tools/bench_seeds.sh" --report-only --protocol lt --imbalance 30 --seeds "$seeds" --out "$out/scratch" \
  --systems "$methods" "${evalset[@]}"
curve=()
for r in $imbalances; do
  bash "$root/tools/bench_seeds.sh" "${ro[@]}" --protocol lt --imbalance "$r" --seeds "$curve_seeds" \
    --out "$out/scratch" --systems aam "${evalset[@]}"
  curve+=(--run "scratch:$r=$out/scratch-lt$r/exp")
done
if [ "$report_only" = false ]; then
  bash "$root/recipes/mini/run.sh" --seed 7 --imbalance 1 --speakers 200 --max_utts 30 --many 20 --few 10 \
    --systems aam --stop_stage 3 --out "$out/pretrain"
fi
[ -f "$pre/avg_model.pt" ] || spkcausal average-ckpt --exp "$pre" --num 3
bash "$root/tools/bench_seeds.sh" "${ro[@]}" --protocol lt --imbalance 30 --seeds "$seeds" --out "$out/ft" \
  --systems "$conf/finetune/aam_ft.yaml" --init_from "$pre/avg_model.pt" "${evalset[@]}"
curve+=(--run "finetune:30=$out/ft-lt30/exp")

# scratch-lt30 holds the controls of aam and aam48: each point names its baseline
spkcausal tail-curve "${curve[@]}" --baseline aam aam_ft --sessions --out "$out/tail_curve"
spkcausal tail-curve --run "scratch48:30=$out/scratch-lt30/exp" --baseline aam48 --sessions --out "$out/tail_curve48"
m="$out/scratch-lt30"
exps=() geo=()
for s in $methods; do
  s=$(basename "$s" .yaml)
  for k in $seeds; do exps+=("$m/exp/${s}_seed$k"); geo+=("$s=$m/exp/${s}_seed$k/emb/vox1_iden_test"); done
done
mkdir -p "$out/methods"
spkcausal session-halves "${exps[@]}" --out "$out/methods"
spkcausal tail-geometry --emb "${geo[@]}" --data "$m/data/vox1_iden_test" --train-data "$m/data/lt_train" \
  --many 30 --few 10 --out "$out/methods/geometry.json" --markdown "$out/methods/geometry.md"
"$SPKCAUSAL_PY" "$root/tools/bench_lt_step.py" --systems aam lt/balanced_softmax cnaam encoder/prototypical \
  encoder/semi_siamese encoder/kpositive encoder/tail_speed encoder/kpositive_natural encoder/tail_speed_keep --out "$out/methods/step.json"
echo "bench_tailcost.sh: done in ${SECONDS}s; tables: $m/exp/bench_seeds/report.md," \
  "$out/scratch48-lt30/exp/bench_seeds/report.md, $out/tail_curve/tail_curve.md, $out/methods/{session_halves,geometry}.md"
