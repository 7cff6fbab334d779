#!/usr/bin/env bash
# The demo: the whole method on a synthetic long-tailed speaker corpus, on CPU, in minutes.
#
#   bash recipes/mini/run.sh                 from a fresh clone (creates .venv first), outputs under demo/
#   bash recipes/mini/run.sh --tiny true     a much smaller corpus and a 2-epoch training, to check the plumbing
#   bash recipes/mini/run.sh --seeds "0 1 2" every system trained once per seed (demo/exp/<system>_seed<k>); the
#                                            table gives mean ± std over seeds (tools/bench_seeds.sh: 5 seeds)
#   bash recipes/mini/run.sh --protocol lt --imbalance 30 --seeds "0 1 2"
#                                            the long-tail protocol (outputs under demo-lt30/): a balanced pool
#                                            (every speaker max_utts), the long-tailed subset at R drawn from it
#                                            as ImageNet-LT from ImageNet, its balanced control, the baseline
#                                            trained on both, and the report's "Tail cost" table
#
# Builds the corpus (spkcausal synth, VoxCeleb1 layout), prepares it like VoxCeleb1, profiles and plots its long
# tail, builds seen-speaker trial lists on the held-out utterances of the training speakers, trains three
# systems (Baseline AAM, class-balanced re-sampling AAM, de-confounded Causal Norm AAM; the same tiny ECAPA,
# data, steps and scale), fine-tunes the baseline and the de-confounded one with a large margin (+LM), builds
# two decoupled classifiers on the baseline's embeddings (cRT, tau-norm), extracts embeddings, scores the
# held-out-speaker list and the seen-speaker list (cosine, mean subtraction, AS-norm with its top-N chosen on the
# seen-speaker dev list, then calibration and QMF trained on that dev list: LLRs with Cllr and actual DCF; TDE
# with alpha chosen on the identification val split, or with --alpha_on dev_eer|dev_min_dcf on the seen-speaker
# dev list), measures closed-set identification by shot group, and prints the tables with 95% intervals and the
# differences from the baseline (demo/exp/report.md) with the long-tail plot (demo/data/longtail.png) and DET
# curves (demo/exp/det_*.png). The ablation grid of docs/demo.md is opt-in:
#   bash recipes/mini/run.sh --systems "aam $(ls recipes/mini/conf/ablation/*.yaml | tr '\n' ' ')"
# Stages: 1 corpus + prepare, 2 profile + seen-speaker lists, 3 train (+LM), 4 average + extract (+ cRT /
# tau-norm), 5 score + back-end (AS-norm top-N, calibration, QMF, verify threshold), 6 TDE, 7 identify, 8 report.
set -euo pipefail
recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$recipe_dir/../.." && pwd)"

. "$recipe_dir/../common/defaults.sh"   # the options every recipe shares; the demo's own values follow
out="$root/demo"
tiny=false
systems="aam resample cnaam aam+crt aam+tau_norm aam+lm cnaam+lm"
                                 # BASE+crt / BASE+tau_norm: decoupled classifiers on BASE's embeddings;
                                 # BASE+lm: large-margin fine-tuning of BASE (conf/lm.yaml)
seen_trials=6000                 # at most this many seen-speaker trials (all target pairs the split has) ...
seen_target_ratio=0.25           # ... with 3 non-targets per target
speakers=100                     # training speakers (long-tailed: max_utts ... max_utts / imbalance)
test_speakers=30                 # held-out verification speakers
max_utts=60
imbalance=30                     # the synthetic corpus' own long tail (with --protocol lt: the subset's)
many=30                          # shot groups for a corpus whose head speaker has 60 utterances:
few=10                           #   Many > 30, Medium 10-30, Few < 10 (100 / 20 would leave Many empty)
epochs=""                        # "" = the configs' value
nj=2
num_avg=3                        # last epochs averaged (the configs keep 3)
lm_num_avg=2                     # last LM epochs averaged (conf/lm.yaml: 2 epochs)
extract_mode=pad                 # neighbours in length share a batch: much faster on CPU than exact lengths
extract_workers=0

. "$root/tools/parse_options.sh"

SECONDS=0
. "$recipe_dir/../common/path.sh"    # a fresh clone has no venv: tools/setup_env.sh makes .venv (about a minute)
. "$recipe_dir/../common/stages.sh"
. "$recipe_dir/../common/protocol.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$nj}"

if [ "$tiny" = true ]; then
  speakers=20; test_speakers=8; max_utts=16; imbalance=8; many=8; few=4; epochs=${epochs:-2}
  out="$out-tiny"
fi
[ -z "$protocol" ] || out="$out-lt$imbalance"
corpus="$out/corpus"; data="$out/data"; exp="$out/exp"
conf_dir="$recipe_dir/conf"      # the demo's own tiny CPU configs (not the corpus recipes' recipes/conf)
train_dir="$data/vox1_iden_train"; val_dir="$data/vox1_iden_val"; test_dir="$data/vox1_iden_test"
eval_dir="$data/vox1_test"; trials="$data/trials/veri_test2.txt"
seen_test="$data/trials/seen_test"; seen_dev="$data/trials/seen_dev"
pool_dir=$train_dir; synth_imbalance=$imbalance  # the protocol: a balanced pool, the long tail drawn from it
[ -z "$protocol" ] || { train_dir="$data/lt_train"; synth_imbalance=1; }
caption="Synthetic corpus: $speakers long-tailed training speakers ($max_utts..$((max_utts / imbalance)) training utterances), $test_speakers held-out verification speakers; tiny ECAPA trained on CPU."
set_launcher "$gpus" "$nnodes" "$node_rank" "$master_addr" "$master_port"
mkdir -p "$out" "$data" "$exp"
protocol_setup "$protocol" "$imbalance" "$exp" "$systems" "$conf_dir" "$data/lt_control"

# synth writes the held-out split itself (iden train / val / test), so stage 2 only profiles it
if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done "$data" 1; then skip_msg 1 "corpus + prepare" "$data"; else
    spkcausal synth --out "$corpus" --speakers "$speakers" --test-speakers "$test_speakers" --max-utts "$max_utts" \
      --imbalance "$synth_imbalance" --utt-seconds 1.0,2.0 --val-per-speaker "$val_per_speaker" \
      --test-per-speaker "$test_per_speaker" --veri-utts 10 --trials 3000 --nj "$nj" --seed "$seed" > /dev/null
    spkcausal prepare voxceleb1 --root "$corpus" --out "$data" --nj "$nj"
    mark_done "$data" 1
  fi
  stage_finished 1
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  protocol_subset "$data" "$pool_dir" "$train_dir" "$imbalance" "$seed"
  stage_profile --data "$data" --train_dir "$train_dir" --val_dir "$val_dir" --test_dir "$test_dir" \
    --many "$many" --few "$few"
  stage_seen_trials --data "$data" --test_dir "$test_dir" --val_dir "$val_dir" --train_dir "$train_dir" \
    --many "$many" --few "$few" --num_trials "$seen_trials" --target_ratio "$seen_target_ratio" --seed "$seed"
fi

lm_conf="$conf_dir/lm.yaml"
overrides=$(training_overrides ${epochs:+train.epochs=$epochs})   # + --musan, --rirs, --train_overrides, --init_from
. "$recipe_dir/../common/run_stages.sh"
if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  echo "long-tail plot: $data/longtail.png   DET curves: $(ls "$exp"/det_*.png)   table: $exp/report.md"
  log "demo finished in ${SECONDS}s"
fi
