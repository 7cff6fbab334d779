#!/usr/bin/env bash
# prepare_data.sh CN1_ROOT CN2_ROOT COMBINE_MIN_SEC DATA NJ: cnceleb_train(_combined) and cnceleb_eval with
# trials_concat / trials_avg / enroll2utt. Combined audio goes to DATA/cnceleb_train_combined_flac (resumable).
set -euo pipefail
cn1_root=$1 cn2_root=$2 combine=$3 data=$4 nj=$5
if [ -z "$cn1_root" ]; then echo "prepare_data.sh: --cn1_root (CN-Celeb_flac) is required" >&2; exit 1; fi
opts=()
[ -n "$cn2_root" ] && opts+=(--cn2-root "$cn2_root")
[ -n "$combine" ] && opts+=(--combine-min-sec "$combine")
spkcausal prepare cnceleb --root "$cn1_root" --out "$data" --nj "$nj" "${opts[@]}"
