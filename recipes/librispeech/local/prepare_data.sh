#!/usr/bin/env bash
# prepare_data.sh ROOT SUBSETS DATA NJ EVAL_SET NUM_TRIALS DEV_SET NUM_DEV_TRIALS SEED: LibriSpeech data dirs
# (speaker = reader), then seeded balanced trial lists DATA/trials/EVAL_SET and DATA/trials/DEV_SET
# (cross-chapter targets; same seed, same lists).
set -euo pipefail
root=$1 subsets=$2 data=$3 nj=$4 eval_set=$5 num_trials=$6 dev_set=$7 num_dev=$8 seed=$9
if [ -z "$root" ]; then echo "prepare_data.sh: --libri_root is required" >&2; exit 1; fi
# shellcheck disable=SC2086
spkcausal prepare librispeech --root "$root" --out "$data" --nj "$nj" ${subsets:+--subsets $subsets}
mkdir -p "$data/trials"
spkcausal make-trials "$data/$eval_set" --out "$data/trials/$eval_set" --num-trials "$num_trials" --seed "$seed"
if [ "$dev_set" != "$eval_set" ]; then
  spkcausal make-trials "$data/$dev_set" --out "$data/trials/$dev_set" --num-trials "$num_dev" --seed "$seed"
fi
