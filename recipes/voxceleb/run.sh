#!/usr/bin/env bash
# VoxCeleb recipe: de-confounded training (Causal Norm AAM) and TDE inference vs the AAM baseline.
#
#   bash run.sh --vox1_root /data/VoxCeleb1 --vox2_root /data/VoxCeleb2 [--stage N] [--stop_stage M]
#   bash run.sh --gpus 0,1,2,3 ...                       one node, 4 GPUs (torchrun)
#   bash run.sh --gpus 0,1,2,3 --nnodes 2 --node_rank R --master_addr HOST --stage 3 --stop_stage 3
#                                                        stage 3 on every node, other stages on node 0
# Stages (each skips work it finished before; see docs/recipes.md for the files each writes):
#   1 prepare VoxCeleb1 (+ decode VoxCeleb2 m4a -> wav)   5 scoring: cosine, mean sub., AS-norm; AS-norm top-N,
#                                                          calibration, QMF, verify threshold on the seen dev list
#   2 held-out split of the training set, long-tail profile + plots, seen-speaker trial lists
#                                                         6 TDE: alpha chosen on the iden val split, TDE scoring
#   3 training, +lm fine-tune                             7 closed-set identification by shot group
#   4 checkpoint averaging + embedding extraction         8 report table + DET curves
# Training set: --train_set vox2_dev (default, needs --vox2_root) or vox1_dev. --imbalance R > 1 trains on an
# ImageNet-LT-style long-tailed subset (max/min = R) instead of the natural distribution. Systems are the
# shared configs in recipes/conf/ (--systems); --train_overrides "key=value ..." changes any config key.
# --protocol lt --imbalance R: the long-tail protocol, the cost of the tail: training on the long-tailed subset
# at R, the baseline also on its balanced control, and the report's "Tail cost" table (docs/recipes.md).
set -euo pipefail
recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

. "$recipe_dir/../common/defaults.sh"
vox1_root=""
vox2_root=""
train_set=vox2_dev
systems="ecapa512_aam ecapa512_cnaam ecapa512_aam+crt ecapa512_aam+tau_norm ecapa512_aam+lm ecapa512_cnaam+lm"
trials="veri_test2.txt"          # names under $data/trials/; the first goes in the report
eval_set=vox1_test               # vox1_all for the E / H lists
corpus_overrides=""              # key=value changes this corpus makes to the shared configs (none today)

. "$recipe_dir/../../tools/parse_options.sh"
. "$recipe_dir/../common/path.sh"
. "$recipe_dir/../common/stages.sh"
. "$recipe_dir/../common/protocol.sh"   # --protocol lt: the balanced control and the tail cost

split_src="$data/$train_set"
train_dir="$data/train"; val_dir="$data/iden_val"; test_dir="$data/iden_test"
seen_test="$data/trials/seen_test"; seen_dev="$data/trials/seen_dev"   # seen-speaker lists (stage 2)
eval_dir="$data/$eval_set"
trials=$(for t in $trials; do echo "$data/trials/$t"; done)
overrides=$(training_overrides $corpus_overrides)   # + --musan, --rirs, --train_overrides, --init_from
set_launcher "$gpus" "$nnodes" "$node_rank" "$master_addr" "$master_port"
mkdir -p "$data" "$exp"
protocol_setup "$protocol" "$imbalance" "$exp" "$systems" "$conf_dir" "$data/train_control"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done "$data" 1; then skip_msg 1 prepare "$data"; else
    bash "$recipe_dir/local/prepare_data.sh" "$vox1_root" "$vox2_root" "$data" "$nj"
    mark_done "$data" 1
  fi
  stage_finished 1
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  stage_profile --data "$data" --split_src "$split_src" --train_dir "$train_dir" --val_dir "$val_dir" \
    --test_dir "$test_dir" --imbalance "$imbalance" --val_per_speaker "$val_per_speaker" --test_per_speaker "$test_per_speaker" \
    --seed "$seed" --many "$many" --few "$few" "${PROTOCOL_PROFILE_ARGS[@]}"
  stage_seen_trials --data "$data" --test_dir "$test_dir" --val_dir "$val_dir" --train_dir "$train_dir" \
    --many "$many" --few "$few" --num_trials "$seen_trials" --target_ratio "$seen_target_ratio" --seed "$seed" \
    --same_session_ok "$seen_same_session_ok"
fi

. "$recipe_dir/../common/run_stages.sh"
