#!/usr/bin/env bash
# LibriSpeech recipe: speaker = reader; no standard trial list, so seeded balanced lists are generated
# (cross-chapter targets) for the evaluation set and for a dev set of other readers (dev-clean).
#
#   bash run.sh --libri_root /data/LibriSpeech [--stage N] [--stop_stage M]
#   bash run.sh --gpus 0,1,2,3 [--nnodes 2 --node_rank R --master_addr HOST] ...   (torchrun, as in voxceleb)
# Stages (each skips work it finished before; see docs/recipes.md):
#   1 prepare subsets + trial lists                      5 scoring: cosine, mean subtraction, AS-norm
#   2 held-out split of the training set, long-tail profile + plots
#                                                         6 TDE: alpha chosen on the iden val split (the EER
#   3 training (torchrun)                                   curve on the dev-clean trials is recorded beside it)
#   4 checkpoint averaging + embedding extraction         7 closed-set identification by shot group
#                                                         8 report table + DET curves
set -euo pipefail
recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

. "$recipe_dir/../common/defaults.sh"
libri_root=""
subsets=""                       # subsets to prepare ("" = every standard subset present)
train_set=train-clean-100        # train_all = the union of the prepared train-* subsets (e.g. train-960)
eval_set=test-clean
dev_set=dev-clean
num_trials=40000
num_dev_trials=10000
systems="resnet34_aam resnet34_cnaam"

. "$recipe_dir/../../tools/parse_options.sh"
. "$recipe_dir/../common/path.sh"
. "$recipe_dir/../common/stages.sh"

split_src="$data/$train_set"
train_dir="$data/train"; val_dir="$data/iden_val"; test_dir="$data/iden_test"
eval_dir="$data/$eval_set"
trials="$data/trials/$eval_set"
dev_trials="$data/trials/$dev_set"; dev_trials_dir="$data/$dev_set"
score_opts=""
[ -n "$musan" ] && train_overrides="$train_overrides augment.musan=$musan"
[ -n "$rirs" ] && train_overrides="$train_overrides augment.rirs=$rirs"
mkdir -p "$data" "$exp"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done "$data" 1; then skip_msg 1 prepare "$data"; else
    bash "$recipe_dir/local/prepare_data.sh" "$libri_root" "$subsets" "$data" "$nj" "$eval_set" "$num_trials" \
      "$dev_set" "$num_dev_trials" "$seed"
    mark_done "$data" 1
  fi
fi
run_common_stages
