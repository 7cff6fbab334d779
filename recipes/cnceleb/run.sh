#!/usr/bin/env bash
# CN-Celeb recipe: train on CN-Celeb1 dev + CN-Celeb2 (short segments combined to >= 5 s within speaker and
# genre), evaluate on CN-Celeb1 eval with the Concat and Avg enrolment protocols.
#
#   bash run.sh --cn1_root /data/CN-Celeb_flac --cn2_root /data/CN-Celeb2_flac [--stage N] [--stop_stage M]
#   bash run.sh --gpus 0,1,2,3 [--nnodes 2 --node_rank R --master_addr HOST] ...   (torchrun, as in voxceleb)
# Stages (each skips work it finished before; see docs/recipes.md):
#   1 prepare CN-Celeb (+ combine short segments)        5 scoring: cosine, mean sub., AS-norm; AS-norm top-N,
#                                                         calibration, QMF, verify threshold on the seen dev list
#   2 held-out split of the training set, long-tail profile + plots, seen-speaker trial lists
#                                                         6 TDE: alpha chosen on the iden val split, TDE scoring
#   3 training, +lm fine-tune                             7 closed-set identification by shot group
#   4 checkpoint averaging + embedding extraction         8 report table + DET curves
# Trials: trials_concat (Concat: the enroll/*.flac file) and trials_avg (Avg: the mean of the enroll.map
# segments' embeddings, through enroll2utt); the first list in --trials goes in the report. Systems are the
# shared configs in recipes/conf/ (--systems); --train_overrides "key=value ..." changes any config key.
# --protocol lt --imbalance R: the long-tail protocol, the cost of the tail: training on the long-tailed subset
# at R, the baseline also on its balanced control, and the report's "Tail cost" table (docs/recipes.md).
set -euo pipefail
recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

. "$recipe_dir/../common/defaults.sh"
cn1_root=""
cn2_root=""
combine_min_sec=5.0              # "" keeps the short segments as they are
systems="resnet34_aam resnet34_cnaam resnet34_aam+crt resnet34_aam+tau_norm resnet34_aam+lm resnet34_cnaam+lm"
trials="trials_concat trials_avg"   # names under $data/cnceleb_eval/
corpus_overrides=""              # key=value changes this corpus makes to the shared configs (none today)

. "$recipe_dir/../../tools/parse_options.sh"
. "$recipe_dir/../common/path.sh"
. "$recipe_dir/../common/stages.sh"
. "$recipe_dir/../common/protocol.sh"   # --protocol lt: the balanced control and the tail cost

if [ -n "$combine_min_sec" ]; then split_src="$data/cnceleb_train_combined"; else split_src="$data/cnceleb_train"; fi
train_dir="$data/train"; val_dir="$data/iden_val"; test_dir="$data/iden_test"
seen_test="$data/trials/seen_test"; seen_dev="$data/trials/seen_dev"   # seen-speaker lists (stage 2)
eval_dir="$data/cnceleb_eval"
trials=$(for t in $trials; do echo "$eval_dir/$t"; done)
enroll_map="$eval_dir/enroll2utt"   # the Avg list's enrolment = mean of its segments' embeddings
overrides=$(training_overrides $corpus_overrides)   # + --musan, --rirs, --train_overrides, --init_from
set_launcher "$gpus" "$nnodes" "$node_rank" "$master_addr" "$master_port"
mkdir -p "$data" "$exp"
protocol_setup "$protocol" "$imbalance" "$exp" "$systems" "$conf_dir" "$data/train_control"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if is_done "$data" 1; then skip_msg 1 prepare "$data"; else
    bash "$recipe_dir/local/prepare_data.sh" "$cn1_root" "$cn2_root" "$combine_min_sec" "$data" "$nj"
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
