#!/usr/bin/env bash
# The demo: the whole method on a synthetic long-tailed speaker corpus, on CPU, in minutes.
#
#   bash recipes/mini/run.sh                 from a fresh clone (creates .venv first), outputs under demo/
#   bash recipes/mini/run.sh --tiny true     a much smaller corpus and a 2-epoch training, to check the plumbing
#
# Builds the corpus (spkcausal synth, VoxCeleb1 layout), prepares it like VoxCeleb1, profiles and plots its long
# tail, trains three systems (Baseline AAM, class-balanced re-sampling AAM, de-confounded Causal Norm AAM; the
# same tiny ECAPA, data, steps and scale), extracts embeddings, scores the held-out-speaker trial list (cosine,
# mean subtraction, AS-norm; TDE with alpha chosen on the identification val split), measures closed-set
# identification by shot group on held-out utterances of the training speakers, and prints the table
# (demo/exp/report.md) with the long-tail plot (demo/data/longtail.png) and DET curves (demo/exp/det_*.png).
# Stages: 1 corpus + prepare, 2 profile, 3 train, 4 average + extract, 5 score, 6 TDE, 7 identify, 8 report.
set -euo pipefail
recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$recipe_dir/../.." && pwd)"

stage=1
stop_stage=8
out="$root/demo"
tiny=false
systems="aam resample cnaam"
speakers=100                     # training speakers (long-tailed: max_utts ... max_utts / imbalance)
test_speakers=30                 # held-out verification speakers
max_utts=60
imbalance=30
val_per_speaker=2                # iden val: chooses TDE's alpha
test_per_speaker=4               # iden test: the identification columns
many=30                          # shot groups for a corpus whose head speaker has 60 utterances:
few=10                           #   Many > 30, Medium 10-30, Few < 10 (100 / 20 would leave Many empty)
epochs=""                        # "" = the configs' value
nj=2
seed=0
gpus=""
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500

. "$root/tools/parse_options.sh"

SECONDS=0
# A fresh clone has no venv: setup_env.sh makes .venv (about a minute) and prints its python.
py="$(bash "$root/tools/setup_env.sh")"
export PATH="$(dirname "$py"):$PATH"
echo "using $py"
. "$recipe_dir/../common/path.sh"
. "$recipe_dir/../common/stages.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$nj}"

if [ "$tiny" = true ]; then
  speakers=20; test_speakers=8; max_utts=16; imbalance=8; many=8; few=4; epochs=${epochs:-2}
  out="$out-tiny"
fi
corpus="$out/corpus"; data="$out/data"; exp="$out/exp"
conf_dir="$recipe_dir/conf"
train_dir="$data/vox1_iden_train"; val_dir="$data/vox1_iden_val"; test_dir="$data/vox1_iden_test"
eval_dir="$data/vox1_test"; trials="$data/trials/veri_test2.txt"
split_src=""; score_opts=""; dev_trials=""; dev_trials_dir=""
num_avg=3
alphas="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6,1.7,1.8,1.9,2.0"
asnorm_top=50
extract_mode=pad                 # neighbours in length share a batch: much faster on CPU than exact lengths
extract_workers=1
train_overrides="${epochs:+train.epochs=$epochs}"
caption="Synthetic corpus: $speakers long-tailed training speakers ($max_utts..$((max_utts / imbalance)) training utterances), $test_speakers held-out verification speakers; tiny ECAPA trained on CPU."
mkdir -p "$out" "$data" "$exp"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done "$data" 1; then skip_msg 1 "corpus + prepare" "$data"; else
    spkcausal synth --out "$corpus" --speakers "$speakers" --test-speakers "$test_speakers" --max-utts "$max_utts" \
      --imbalance "$imbalance" --utt-seconds 1.0,2.0 --val-per-speaker "$val_per_speaker" \
      --test-per-speaker "$test_per_speaker" --veri-utts 10 --trials 3000 --nj "$nj" --seed "$seed" > /dev/null
    spkcausal prepare voxceleb1 --root "$corpus" --out "$data" --nj "$nj"
    mark_done "$data" 1
  fi
  log "stage 1 finished at ${SECONDS}s"
fi
run_common_stages
if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  echo "long-tail plot: $data/longtail.png   DET curves: $(ls "$exp"/det_*.png)   table: $exp/report.md"
  log "demo finished in ${SECONDS}s"
fi
