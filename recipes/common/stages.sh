# Stages 2-8 shared by every recipe (sourced by recipes/<corpus>/run.sh after its options are parsed).
#
# The recipe sets, before calling these functions:
#   data exp            data and experiment roots
#   systems             config names (conf/<name>.yaml) or paths to YAML files; exp dir = $exp/<name>
#   conf_dir            where config names are looked up
#   train_dir val_dir test_dir   training dir and held-out val / test dirs of its speakers (identification)
#   eval_dir trials     data dir holding the trial keys, and the trial lists (the first one goes in the report)
#   score_opts          extra `spkcausal score` options (e.g. --enroll-map for CN-Celeb's Avg protocol)
#   gpus nnodes node_rank master_addr master_port   torchrun pass-through ("" gpus: one process, no torchrun)
#   num_avg many few alphas asnorm_top extract_mode train_overrides caption dev_trials dev_trials_dir
#
# Every stage writes its outputs, then a marker `.done/<stage>` (atomically); a stage whose marker exists is
# skipped, so any stage can be re-run alone. Delete the marker (or the exp dir) to redo it.

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

done_file() { echo "$1/.done/$2"; }
is_done() { [ -f "$(done_file "$1" "$2")" ]; }
mark_done() {  # mark_done DIR STAGE [CONTENT]: written last, atomically (temp + rename)
  local f; f="$(done_file "$1" "$2")"
  mkdir -p "$(dirname "$f")"
  echo "${3:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}" > "$f.tmp.$$" && mv -f "$f.tmp.$$" "$f"
}
skip_msg() { log "stage $1 ($2): done before, skipping (remove $(done_file "$3" "$1") to redo)"; }

sys_name() { basename "$1" .yaml; }
sys_conf() {
  case "$1" in
    *.yaml|*.yml) echo "$1" ;;
    *) echo "$conf_dir/$1.yaml" ;;
  esac
}
num_gpus() { if [ -z "$gpus" ]; then echo 0; else echo "$gpus" | tr ',' '\n' | grep -c .; fi; }

# Run `spkcausal ARGS...` under torchrun when GPUs are listed, else as one plain process.
launch() {
  local n; n=$(num_gpus)
  if [ "$n" -gt 0 ]; then
    CUDA_VISIBLE_DEVICES="$gpus" "$SPKCAUSAL_PY" -m torch.distributed.run --nnodes="$nnodes" \
      --node_rank="$node_rank" --nproc_per_node="$n" --master_addr="$master_addr" --master_port="$master_port" \
      -m spkcausal "$@"
  else
    spkcausal "$@"
  fi
}

is_causal() {  # the experiment's merged config has a Causal Norm head (TDE applies)
  "$SPKCAUSAL_PY" -c 'import sys, yaml; sys.exit(not yaml.safe_load(open(sys.argv[1]))["head"]["name"].startswith("causal_norm"))' \
    "$1/config.yaml"
}

trial_list() { for t in $trials; do echo "$t"; done; }
report_trial() { trial_list | head -n 1; }

# ---------------------------------------------------------------- stage 2: held-out split + long-tail profile
# split_src (optional): a data dir to split into $train_dir / $val_dir / $test_dir first (imbalance > 1 makes
# the training part an ImageNet-LT-style long-tailed subset).
stage_profile() {
  if is_done "$data" 2; then skip_msg 2 profile "$data"; return; fi
  if [ -n "${split_src:-}" ]; then
    if [ "${imbalance:-1}" != 1 ]; then
      spkcausal longtail-subset "$split_src" --out-train "$train_dir" --out-heldout "$data/heldout" \
        --imbalance "$imbalance" --heldout-per-spk $((val_per_spk + test_per_spk)) --seed "$seed"
      spkcausal heldout-split "$data/heldout" --out-val "$val_dir" --out-test "$test_dir" \
        --val-per-spk "$val_per_spk" --test-per-spk "$test_per_spk" --min-train 0 --seed "$seed"
    else
      spkcausal heldout-split "$split_src" --out-train "$train_dir" --out-val "$val_dir" --out-test "$test_dir" \
        --val-per-spk "$val_per_spk" --test-per-spk "$test_per_spk" --min-train 1 --seed "$seed"
    fi
  fi
  spkcausal profile "$train_dir" --many "$many" --few "$few" --out "$data/profile"
  # the training profile first: the plot shades the shot groups of its thresholds (--many / --few)
  if [ -n "${split_src:-}" ]; then
    spkcausal plot-longtail "$data/profile" "$split_src" --labels training "$(basename "$split_src")" \
      --out "$data/longtail.png"
  else
    spkcausal plot-longtail "$data/profile" --labels training --out "$data/longtail.png"
  fi
  mark_done "$data" 2
}

# ---------------------------------------------------------------- stage 3: training (torchrun)
stage_train() {
  local s name e
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"
    if is_done "$e" 3; then skip_msg 3 "train $name" "$e"; continue; fi
    log "stage 3: training $name ($(sys_conf "$s")) on $train_dir"
    # --resume continues an interrupted run from its newest checkpoint (a fresh start when there is none)
    # shellcheck disable=SC2086
    launch train --config "$(sys_conf "$s")" --resume exp_dir="$e" data.train="$train_dir" $train_overrides
    mark_done "$e" 3
  done
}

# ---------------------------------------------------------------- stage 4: checkpoint averaging + extraction
stage_extract() {
  local s name e d
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"
    if is_done "$e" 4; then skip_msg 4 "extract $name" "$e"; continue; fi
    spkcausal average-ckpt --exp "$e" --num "$num_avg"
    # raw (not TDE'd) embeddings of every dir, in one process (stores: $e/emb/<dir name>); TDE is applied
    # from these in stage 6 without running the model again
    launch extract-dirs --exp "$e" --data "$train_dir" "$val_dir" "$test_dir" "$eval_dir" ${dev_trials_dir:+"$dev_trials_dir"} \
      --out-dir "$e/emb" --mode "$extract_mode" --num-workers "$extract_workers"
    mark_done "$e" 4
  done
}

# score_variants E EMB_PREFIX VARIANT_PREFIX: cosine, mean subtraction and AS-norm scores of every trial list
score_variants() {
  local e=$1 ev=$2 tr=$3 p=$4
  local tl; tl=$(trial_list)
  # shellcheck disable=SC2086
  spkcausal score --trials $tl --emb "$ev" --out-dir "$e/scores/${p}cosine" $score_opts
  # shellcheck disable=SC2086
  spkcausal score --trials $tl --emb "$ev" --mean-store "$tr" --out-dir "$e/scores/${p}mean_sub" $score_opts
  # shellcheck disable=SC2086
  spkcausal score --trials $tl --emb "$ev" --mean-store "$tr" --cohort "$tr" --cohort-data "$train_dir" \
    --norm asnorm --asnorm-top "$asnorm_top" --out-dir "$e/scores/${p}asnorm" $score_opts
}

# ---------------------------------------------------------------- stage 5: scoring (cosine, mean sub., AS-norm)
stage_score() {
  local s name e t ev tr
  t=$(basename "$(report_trial)")
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"
    if is_done "$e" 5; then skip_msg 5 "score $name" "$e"; continue; fi
    ev="$e/emb/$(basename "$eval_dir")"; tr="$e/emb/$(basename "$train_dir")"
    score_variants "$e" "$ev" "$tr" ""
    spkcausal record-scores --exp "$e" "cosine=$e/scores/cosine/$t.score" \
      "mean_sub=$e/scores/mean_sub/$t.score" "asnorm=$e/scores/asnorm/$t.score"
    mark_done "$e" 5
  done
}

tde_alpha_of() { "$SPKCAUSAL_PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["alpha"])' "$1/tde_alpha.json"; }

# ---------------------------------------------------------------- stage 6: TDE alpha on a dev set, TDE scoring
stage_tde() {
  local s name e t ev tr alpha dev
  t=$(basename "$(report_trial)")
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"
    if ! is_causal "$e"; then log "stage 6: $name has no Causal Norm head: no TDE"; continue; fi
    if is_done "$e" 6; then skip_msg 6 "TDE $name" "$e"; continue; fi
    dev=()
    if [ -n "${dev_trials:-}" ]; then
      dev=(--trials "$dev_trials" --trials-emb "$e/emb/$(basename "${dev_trials_dir:-$val_dir}")")
    fi
    # alpha is chosen on the identification val split (never on the test trials); the curve is kept
    spkcausal tde-alpha --exp "$e" --emb "$e/emb/$(basename "$val_dir")" --data "$val_dir" "${dev[@]}" \
      --alphas "$alphas" --out "$e/tde_alpha.json"
    alpha=$(tde_alpha_of "$e")
    log "stage 6: $name: TDE alpha $alpha (dev curve in $e/tde_alpha.json)"
    ev="$e/emb/$(basename "$eval_dir")"; tr="$e/emb/$(basename "$train_dir")"
    spkcausal tde-apply --alpha "$alpha" "$ev=${ev}_tde" "$tr=${tr}_tde"
    score_variants "$e" "${ev}_tde" "${tr}_tde" "tde_"
    spkcausal record-scores --exp "$e" --tde-alpha "$alpha" "tde=$e/scores/tde_cosine/$t.score" \
      "tde_mean_sub=$e/scores/tde_mean_sub/$t.score" "tde_asnorm=$e/scores/tde_asnorm/$t.score"
    mark_done "$e" 6
  done
}

# ---------------------------------------------------------------- stage 7: closed-set identification
stage_identify() {
  local s name e var tde
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"
    if is_done "$e" 7; then skip_msg 7 "identify $name" "$e"; continue; fi
    var=(cosine mean_sub); tde=()
    if is_causal "$e"; then var+=(tde); tde=(--tde-alpha "$(tde_alpha_of "$e")"); fi
    spkcausal identify --exp "$e" --emb "$e/emb/$(basename "$test_dir")" --data "$test_dir" \
      --train-data "$train_dir" --mean-store "$e/emb/$(basename "$train_dir")" "${tde[@]}" \
      --many "$many" --few "$few" --variants "${var[@]}" --record "$e" --out "$e/identification.json"
    mark_done "$e" 7
  done
}

# ---------------------------------------------------------------- stage 8: report table + DET curves
stage_report() {
  local s name e t dets=() labels=() exps=()
  t=$(basename "$(report_trial)")
  for s in $systems; do
    name=$(sys_name "$s"); e="$exp/$name"; exps+=("$e")
    dets+=("$e/scores/cosine/$t.score"); labels+=("$name")
    if [ -f "$e/scores/tde_cosine/$t.score" ]; then dets+=("$e/scores/tde_cosine/$t.score"); labels+=("$name+TDE"); fi
  done
  # the marker records which experiments the table covers: another --systems list makes a new table
  if is_done "$exp" 8 && [ "$(cat "$(done_file "$exp" 8)")" = "${exps[*]}" ]; then
    skip_msg 8 report "$exp"; cat "$exp/report.md"; return
  fi
  spkcausal plot-det "${dets[@]}" --labels "${labels[@]}" --out "$exp/det_${t%.*}.png"
  spkcausal report "${exps[@]}" --out "$exp" ${caption:+--caption "$caption"} ${report_variants:+--variants $report_variants}
  mark_done "$exp" 8 "${exps[*]}"
}

# ---------------------------------------------------------------- stages 2-8 in order, within --stage / --stop_stage
STAGE_FUNCS=(stage_profile stage_train stage_extract stage_score stage_tde stage_identify stage_report)
run_common_stages() {
  local s
  for s in 2 3 4 5 6 7 8; do
    if [ "$stage" -le "$s" ] && [ "$stop_stage" -ge "$s" ]; then
      "${STAGE_FUNCS[$((s - 2))]}"
      log "stage $s finished at ${SECONDS}s"
    fi
  done
}
