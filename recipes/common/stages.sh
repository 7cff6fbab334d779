# Stage bodies shared by every recipe; sourced by recipes/<corpus>/run.sh, which lists its stages in order and
# calls one function per stage with every input as a named argument:
#
#   if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
#     stage_train --exp "$exp" --systems "$systems" --conf_dir "$conf_dir" --train_dir "$train_dir"
#   fi
#
# A function reads nothing from run.sh but its arguments, and set_launcher's torchrun settings (stages 3 and 4).
# A missing, unknown or valueless argument stops the recipe. Systems are config names (conf_dir/<name>.yaml),
# paths to YAML files, or BASE+lm / BASE+crt|tau_norm|ncm|lws|oltr / BASE+control; `spkcausal plan` names their
# runs (exp/<name>, exp/<name>_seed<k> for each of --seeds) and the stages loop over its lines (plan_runs). Lists
# (systems, seeds, trials, dirs) are space-separated.
#
# Every stage writes its outputs, then a marker `.done/<stage>` (atomically); a stage whose marker exists is
# skipped, so any stage can be re-run alone. Delete the marker (or the exp dir) to redo it.

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "$*" >&2; exit 1; }

done_file() { echo "$1/.done/$2"; }
is_done() { [ -f "$(done_file "$1" "$2")" ]; }
mark_done() {  # mark_done DIR STAGE [CONTENT]: written last, atomically (temp + rename)
  local f; f="$(done_file "$1" "$2")"
  mkdir -p "$(dirname "$f")"
  echo "${3:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}" > "$f.tmp.$$" && mv -f "$f.tmp.$$" "$f"
}
skip_msg() { log "stage $1 ($2): done before, skipping (remove $(done_file "$3" "$1") to redo)"; }
stage_finished() { log "stage $1 finished at ${SECONDS}s"; }

# stage_args FUNC "NAME ... OPTIONAL? ..." "$@": set FUNC's locals from its "--NAME value" arguments (bash's
# dynamic scope reaches the caller's `local` names); a name ending in "?" may be omitted (it stays "").
stage_args() {
  local _fn=$1 _spec=$2 _n _names
  read -ra _names <<< "$_spec"  # read, not an unquoted expansion: "seed?" must not glob
  shift 2
  while [ $# -gt 0 ]; do
    _n="${1#--}"
    case "$1 $_spec " in
      --*" $_n "*|--*" $_n? "*) ;;
      *) die "$_fn: unknown argument '$1' (takes: $_spec)" ;;
    esac
    [ $# -ge 2 ] || die "$_fn: $1 needs a value"
    printf -v "$_n" '%s' "$2"
    shift 2
  done
  for _n in "${_names[@]}"; do
    case "$_n" in
      *\?) ;;
      *) [ -n "${!_n+set}" ] || die "$_fn: --$_n is required" ;;
    esac
  done
}

sys_name() { basename "$1" .yaml; }
sys_conf() {  # sys_conf SYSTEM CONF_DIR
  case "$1" in
    *.yaml|*.yml) echo "$1" ;;
    *) echo "$2/$1.yaml" ;;
  esac
}

# set_launcher GPUS NNODES NODE_RANK MASTER_ADDR MASTER_PORT: how stages 3 and 4 start `spkcausal` ("" GPUS:
# one plain process; else torchrun over the listed GPUs, CUDA_VISIBLE_DEVICES=GPUS).
_gpus="" _nnodes=1 _node_rank=0 _master_addr=localhost _master_port=29500
set_launcher() { _gpus=$1 _nnodes=$2 _node_rank=$3 _master_addr=$4 _master_port=$5; }

# Run `spkcausal ARGS...` under torchrun when GPUs are listed, else as one plain process.
launch() {
  local n=0
  [ -z "$_gpus" ] || n=$(echo "$_gpus" | tr ',' '\n' | grep -c .)
  if [ "$n" -gt 0 ]; then
    CUDA_VISIBLE_DEVICES="$_gpus" "$SPKCAUSAL_PY" -m torch.distributed.run --nnodes="$_nnodes" \
      --node_rank="$_node_rank" --nproc_per_node="$n" --master_addr="$_master_addr" --master_port="$_master_port" \
      -m spkcausal "$@"
  else
    spkcausal "$@"
  fi
}

# tde_alpha_of EXP_DIR: the alpha stage 6 chose (the last line of `spkcausal tde-alpha`, kept in tde_alpha.txt).
tde_alpha_of() {
  local a
  a=$(awk '$1 == "alpha" {a = $2} END {print a}' "$1/tde_alpha.txt" 2>/dev/null) || true
  [ -n "$a" ] || die "no chosen alpha in $1/tde_alpha.txt: run stage 6 first (remove $1/.done/6 to redo it)"
  echo "$a"
}

first_word() { echo "$1" | awk '{print $1; exit}'; }

# ---------------------------------------------------------------- stage 2: held-out split + long-tail profile
# stage_profile --data D --train_dir T --val_dir V --test_dir E --many N --few N
#               [--split_src S --imbalance R --val_per_speaker N --test_per_speaker N --seed N] [--control_dir C]
# With --split_src, S is split into T / V / E first (imbalance R > 1 makes T an ImageNet-LT-style long-tailed
# subset; --control_dir also writes its balanced control C, the long-tail protocol of recipes/common/protocol.sh);
# without it T / V / E exist already. Marker: D/.done/2.
stage_profile() {
  local data train_dir val_dir test_dir many few split_src="" imbalance="" val_per_speaker="" test_per_speaker="" seed="" \
    control_dir="" ctl=()
  stage_args stage_profile "data train_dir val_dir test_dir many few split_src? imbalance? val_per_speaker? \
test_per_speaker? seed? control_dir?" "$@"
  if is_done "$data" 2; then
    skip_msg 2 profile "$data"
  else
    if [ -n "$split_src" ]; then
      local v
      for v in imbalance val_per_speaker test_per_speaker seed; do
        [ -n "${!v}" ] || die "stage_profile: --split_src needs --$v"
      done
      [ -z "$control_dir" ] || [ "$imbalance" != 1 ] || die "stage_profile: --control_dir needs --imbalance > 1"
      [ -z "$control_dir" ] || ctl=(--control "$control_dir")
      if [ "$imbalance" != 1 ]; then
        spkcausal longtail-subset "$split_src" --out-train "$train_dir" --out-heldout "$data/heldout" \
          --imbalance "$imbalance" --heldout-per-spk $((val_per_speaker + test_per_speaker)) --seed "$seed" "${ctl[@]}"
        spkcausal heldout-split "$data/heldout" --out-val "$val_dir" --out-test "$test_dir" \
          --val-per-spk "$val_per_speaker" --test-per-spk "$test_per_speaker" --min-train 0 --seed "$seed"
      else
        spkcausal heldout-split "$split_src" --out-train "$train_dir" --out-val "$val_dir" --out-test "$test_dir" \
          --val-per-spk "$val_per_speaker" --test-per-spk "$test_per_speaker" --min-train 1 --seed "$seed"
      fi
    fi
    spkcausal profile "$train_dir" --many "$many" --few "$few" --out "$data/profile"
    # the training profile first: the plot shades the shot groups of its thresholds (--many / --few)
    if [ -n "$split_src" ]; then
      spkcausal plot-longtail "$data/profile" "$split_src" --labels training "$(basename "$split_src")" \
        --out "$data/longtail.png"
    else
      spkcausal plot-longtail "$data/profile" --labels training --out "$data/longtail.png"
    fi
    mark_done "$data" 2
  fi
  stage_finished 2
}

# ---------------------------------------------------------------- seen-speaker trial lists (stage 2)
# stage_seen_trials --data D --test_dir E --val_dir V --train_dir T --many N --few N --num_trials N
#                   --target_ratio R --seed S [--same_session_ok true|false]
# Trial lists on held-out utterances of the *training* speakers: D/trials/seen_test on the iden test split E
# (reported by shot group of the enrolment speaker) and D/trials/seen_dev on the iden val split V (a dev list
# for choosing TDE's alpha). spkcausal make-trials --fit: seeded, targets from different sessions where the dir
# has utt2sess (unless --same_session_ok true), spread evenly over speakers, non-targets drawn uniformly, so
# each shot group gets trials in proportion to its speakers; at most N trials, fewer when the split has fewer
# target pairs (then all of them, non-targets at ratio R). The counts per group are printed and kept in
# D/trials/seen_{test,dev}.counts. Marker: D/.done/seen_trials.
stage_seen_trials() {
  local data test_dir val_dir train_dir many few num_trials target_ratio seed same_session_ok=false d name same=()
  stage_args stage_seen_trials "data test_dir val_dir train_dir many few num_trials target_ratio seed \
same_session_ok?" "$@"
  if is_done "$data" seen_trials; then skip_msg seen_trials "seen-speaker trials" "$data"; return 0; fi
  [ "$same_session_ok" = true ] && same=(--same-session-ok)
  mkdir -p "$data/trials"
  for d in "seen_test:$test_dir" "seen_dev:$val_dir"; do
    name=${d%%:*}
    if ! spkcausal make-trials "${d#*:}" --out "$data/trials/$name" --num-trials "$num_trials" --fit \
      --target-ratio "$target_ratio" --seed "$seed" "${same[@]}" --by-group "$train_dir" "$many" "$few" \
      > "$data/trials/$name.counts"; then
      # one held-out val utterance per speaker (--val_per_speaker 1) has no target pair: no dev list, no dev criterion
      [ "$name" = seen_dev ] || die "stage_seen_trials: cannot build $name from ${d#*:}"
      log "stage 2: no seen-speaker dev list (see the error above); stage 6 chooses alpha on iden val accuracy"
      rm -f "$data/trials/$name.counts"; continue
    fi
    cat "$data/trials/$name.counts"
  done
  mark_done "$data" seen_trials
}

# ---------------------------------------------------------------- the run plan: systems x seeds
# plan_runs SYSTEMS SEEDS [CONF_DIR] [EXP]: RUNS = the lines of `spkcausal plan` (one run each: its experiment-dir
# name, kind train|lm|decoupled, system, seed, parent run, control, Causal Norm head or not (from the trained
# run's config under EXP, else the system's), decoupled method, config, and the SYSTEM@SEED `train --plan-run` records
# in run.json). run_fields LINE sets those fields as the caller's locals (seed "" when none).
PLAN_FIELDS="name kind system seed parent control causal method conf run"
plan_runs() {
  local out args=()
  [ -z "${3:-}" ] || args+=(--conf-dir "$3")
  [ -z "${4:-}" ] || args+=(--exp "$4")
  # shellcheck disable=SC2086
  out=$(spkcausal plan $1 --seeds $2 "${args[@]}") || die "spkcausal plan $1: no run plan (see above)"
  mapfile -t RUNS <<< "$out"
}
run_fields() {
  # shellcheck disable=SC2034,SC2086
  read -r $PLAN_FIELDS <<< "$1"
  [ "$seed" != - ] || seed=""
}
has_tde() {  # has_tde: the run of the last run_fields has a Causal Norm head
  case "$causal" in true) return 0 ;; false) return 1 ;; *) die "$name: is its head Causal Norm? the plan says '$causal'" ;; esac
}

# ---------------------------------------------------------------- stage 3: training (torchrun)
# stage_train --exp X --systems "S ..." --conf_dir C --train_dir T [--overrides "key=value ..."] [--seeds "K ..."]
#             [--lm_conf FILE --num_avg N]
# Trains each system (once per seed) on T; the overrides go after the config (`spkcausal train --config
# C/S.yaml exp_dir=X/S data.train=T OVERRIDES [seed=K]`), and the merged result is X/S/config.yaml. Decoupled
# systems (BASE+METHOD) are built in stage 4. Then the BASE+lm systems: BASE's last N epochs averaged
# (X/BASE/avg_model.pt), and a fine-tuning run from it in X/BASE_lm with BASE's config, then the LM overlay
# (--lm_conf: longer chunks, the larger margin from the first step, a small lr, no speed perturbation), then
# the overrides, with train.init_from=X/BASE/avg_model.pt train.init_head=true (the classifier too, and for
# Causal Norm heads x_bar, which keeps tracking). Marker: X/S/.done/3.
stage_train() {
  local exp systems conf_dir train_dir overrides="" seeds="" lm_conf="" num_avg="" pass e b lm init line name kind system seed parent control causal method conf run
  stage_args stage_train "exp systems conf_dir train_dir overrides? seeds? lm_conf? num_avg?" "$@"
  plan_runs "$systems" "$seeds" "$conf_dir"
  for pass in train lm; do  # the +lm runs after their parents
    for line in "${RUNS[@]}"; do
      run_fields "$line"
      [ "$kind" = "$pass" ] || continue
      e="$exp/$name" lm=() init=()
      if is_done "$e" 3; then skip_msg 3 "train $name" "$e"; continue; fi
      if [ "$kind" = lm ]; then
        b="$exp/$parent"
        [ -n "$lm_conf" ] && [ -n "$num_avg" ] || die "stage_train: $name needs --lm_conf and --num_avg"
        is_done "$b" 3 || die "stage_train: $name fine-tunes $b, which is not trained (add its system to --systems)"
        spkcausal average-ckpt --exp "$b" --num "$num_avg" > /dev/null
        log "stage 3: large-margin fine-tuning $name from $b/avg_model.pt ($lm_conf)"
        lm=(--config "$lm_conf") init=(train.init_from="$b/avg_model.pt" train.init_head=true)
      else
        log "stage 3: training $name ($conf) on $train_dir"
      fi
      # --resume continues an interrupted run from its newest checkpoint (a fresh start when there is none)
      # shellcheck disable=SC2086
      launch train --config "$conf" "${lm[@]}" --plan-run "$run" --resume exp_dir="$e" data.train="$train_dir" \
        $overrides ${seed:+seed=$seed} "${init[@]}"
      mark_done "$e" 3
    done
  done
  stage_finished 3
}

# ---------------------------------------------------------------- stage 4: checkpoint averaging + extraction
# stage_extract --exp X --systems "S ..." --num_avg N --dirs "D ..." --mode exact|bucket|pad|crop --workers N
#               [--seeds "K ..."] [--train_dir T --val_dir V] [--lm_num_avg M]
# Averages the last N epoch checkpoints (M for the BASE+lm systems; default N) into X/S/avg_model.pt, then writes the raw (not TDE'd) embeddings of
# every data dir D, in one process, to X/S/emb/<basename D> (TDE is applied from these in stage 6 without
# running the model again). Then the decoupled systems BASE+METHOD (needs T and V): `spkcausal decouple` on
# the base's training embeddings (tau_norm: tau chosen on V), X/BASE_METHOD/emb linking to the base's
# stores. Marker: X/S/.done/4.
stage_extract() {
  local exp systems num_avg dirs mode workers seeds="" train_dir="" val_dir="" lm_num_avg="" e b n line name kind system seed parent control causal method conf run
  stage_args stage_extract "exp systems num_avg dirs mode workers seeds? train_dir? val_dir? lm_num_avg?" "$@"
  plan_runs "$systems" "$seeds"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    [ "$kind" != decoupled ] || continue
    e="$exp/$name"
    if is_done "$e" 4; then skip_msg 4 "extract $name" "$e"; continue; fi
    n=$num_avg; [ "$kind" != lm ] || n=${lm_num_avg:-$num_avg}
    spkcausal average-ckpt --exp "$e" --num "$n"
    # shellcheck disable=SC2086
    launch extract-dirs --exp "$e" --data $dirs --out-dir "$e/emb" --mode "$mode" --num-workers "$workers"
    mark_done "$e" 4
  done
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    [ "$kind" = decoupled ] || continue
    e="$exp/$name" b="$exp/$parent"
    if is_done "$e" 4; then skip_msg 4 "decouple $name" "$e"; continue; fi
    [ -n "$train_dir" ] && [ -n "$val_dir" ] || die "stage_extract: decoupled system $name needs --train_dir and --val_dir"
    is_done "$b" 4 || die "stage_extract: $name is built on $b, which has no embeddings (add its system to --systems)"
    spkcausal decouple --exp "$b" --method "$method" --out "$e" \
      --train-emb "$b/emb/$(basename "$train_dir")" --train-data "$train_dir" \
      --val-emb "$b/emb/$(basename "$val_dir")" --val-data "$val_dir" --seed "${seed:-0}"
    mark_done "$e" 4
  done
  stage_finished 4
}

# score_variants E EVAL_STORE TRAIN_STORE PREFIX TRAIN_DIR ASNORM_TOP "TRIALS" "SCORE_OPTS": cosine, mean
# subtraction and AS-norm scores of every trial list, in E/scores/PREFIX{cosine,mean_sub,asnorm}/<list>.score
score_variants() {
  local e=$1 ev=$2 tr=$3 p=$4 train_dir=$5 top=$6 trials=$7 score_opts=$8
  # shellcheck disable=SC2086
  spkcausal score --trials $trials --emb "$ev" --out-dir "$e/scores/${p}cosine" $score_opts
  # shellcheck disable=SC2086
  spkcausal score --trials $trials --emb "$ev" --mean-store "$tr" --out-dir "$e/scores/${p}mean_sub" $score_opts
  # shellcheck disable=SC2086
  spkcausal score --trials $trials --emb "$ev" --mean-store "$tr" --cohort "$tr" --cohort-data "$train_dir" \
    --norm asnorm --asnorm-top "$top" --out-dir "$e/scores/${p}asnorm" $score_opts
}

# record_variants E SCORE_E PREFIX LIST UTT2SPK [--seen TRAIN_DIR MANY FEW] [--tde-alpha A]: the rows
# {PREFIX}{cosine,mean_sub,asnorm} of E/results.json from SCORE_E's score files of LIST (bootstrap intervals
# over the enrolment speakers of UTT2SPK), and {PREFIX}asnorm_{cal,qmf} (LLRs: Cllr, actDCF too) where the
# back-end wrote them; --seen records them by shot group of the enrolment speaker.
record_variants() {
  local e=$1 se=$2 p=$3 t=$4 u2s=$5 opts=() row rows=(cosine mean_sub asnorm)
  shift 5
  while [ $# -gt 0 ]; do
    case "$1" in
      --seen) opts+=(--seen --train-data "$2" --many "$3" --few "$4"); shift 4 ;;
      --tde-alpha) opts+=(--tde-alpha "$2"); shift 2 ;;
      *) die "record_variants: unknown argument $1" ;;
    esac
  done
  for row in asnorm_cal asnorm_qmf; do [ -f "$se/scores/$p$row/$t.score" ] && rows+=("$row"); done
  local pairs=() v
  for row in "${rows[@]}"; do
    v="$p$row"; [ "$v" = tde_cosine ] && v=tde  # row names: cosine, mean_sub, asnorm, tde, tde_mean_sub, ...
    pairs+=("$v=$se/scores/$p$row/$t.score")
  done
  spkcausal record-scores --exp "$e" --utt2spk "$u2s" "${opts[@]}" "${pairs[@]}"
}

# asnorm_top_of E TOP [DEV_LIST DEV_STORE TRAIN_STORE TRAIN_DIR]: TOP, or with TOP=dev the cohort size that
# `spkcausal asnorm-top` chooses by minDCF(0.01) on the dev list (counts and cohort shares tried; the curve is
# kept in E/asnorm_top.json and reused by stage 6).
asnorm_top_of() {
  local e=$1 top=$2 dev=${3:-} ds=${4:-} tr=${5:-} train_dir=${6:-}
  if [ "$top" != dev ]; then echo "$top"; return 0; fi
  [ -f "$e/asnorm_top.json" ] || { [ -n "$dev" ] && [ -f "$dev" ]; } ||
    die "--asnorm_top dev needs the seen-speaker dev list (stage 2: seen_dev)"
  spkcausal asnorm-top --reuse --trials "$dev" --emb "$ds" --cohort "$tr" --cohort-data "$train_dir" \
    --mean-store "$tr" --out "$e/asnorm_top.json"
}

# backend_variants E PREFIX DEV DEV_STORE DEV_DIR TRAIN_STORE TRAIN_DIR TOP LIST:STORE:DIR ...: the calibrated
# back-end of the AS-norm scores. The dev list is scored like the others (PREFIXasnorm); on its scores a linear
# calibration (score -> LLR) and QMF (score + durations, embedding norms and AS-norm cohort means of both sides
# -> LLR) are trained (E/backend/PREFIXasnorm_{cal,qmf}.json) and applied to each LIST's AS-norm scores (its
# embeddings in STORE, its durations from data dir DIR): E/scores/PREFIX{asnorm_cal,asnorm_qmf}/LIST.score.
backend_variants() {
  local e=$1 p=$2 dev=$3 ds=$4 dd=$5 tr=$6 train_dir=$7 top=$8 item l st dir dn norm
  shift 8
  dn=$(basename "$dev")
  norm=(--cohort "$tr" --cohort-data "$train_dir" --mean-store "$tr")
  spkcausal score --trials "$dev" --emb "$ds" "${norm[@]}" --norm asnorm --asnorm-top "$top" \
    --out-dir "$e/scores/${p}asnorm" > /dev/null
  spkcausal calibrate --dev "$e/scores/${p}asnorm/$dn.score" --out "$e/backend/${p}asnorm_cal.json"
  spkcausal qmf --dev "$e/scores/${p}asnorm/$dn.score" --emb "$ds" "${norm[@]}" --utt2dur "$dd" \
    --asnorm-top "$top" --out "$e/backend/${p}asnorm_qmf.json"
  for item in "$@"; do
    IFS=: read -r l st dir <<< "$item"
    spkcausal calibrate --model "$e/backend/${p}asnorm_cal.json" --apply "$e/scores/${p}asnorm/$l.score" \
      --out "$e/scores/${p}asnorm_cal/$l.score" > /dev/null
    spkcausal qmf --model "$e/backend/${p}asnorm_qmf.json" --apply "$e/scores/${p}asnorm/$l.score" --emb "$st" \
      "${norm[@]}" --utt2dur "$dir" --out "$e/scores/${p}asnorm_qmf/$l.score" > /dev/null
  done
}

# verify_threshold E DEV DEV_STORE: the threshold `spkcausal verify` uses with this experiment: plain cosine
# scores of the dev list, a linear calibration of them (E/backend/cosine_cal.json) and the raw score at which its
# LLR meets the Bayes threshold for p_target 0.01 (E/threshold.json, spkcausal set-threshold); the dev list's
# EER threshold when the calibration does not rise with the score (a tiny or useless dev list).
verify_threshold() {
  local e=$1 dev=$2 ds=$3 dn
  dn=$(basename "$dev")
  spkcausal score --trials "$dev" --emb "$ds" --out-dir "$e/scores/cosine" > /dev/null
  spkcausal calibrate --dev "$e/scores/cosine/$dn.score" --out "$e/backend/cosine_cal.json" > /dev/null
  if spkcausal set-threshold "$e" --scores "$e/scores/cosine/$dn.score" \
    --calibration "$e/backend/cosine_cal.json" --p-target 0.01 > /dev/null; then
    log "stage 5: $(basename "$e"): verify threshold in $e/threshold.json (calibrated on $dn, p_target 0.01)"
  else  # a dev list too small or too poor for a rising calibration (the error above says so)
    spkcausal set-threshold "$e" --scores "$e/scores/cosine/$dn.score" > /dev/null
    log "stage 5: $(basename "$e"): no usable calibration on $dn: verify threshold = its EER threshold"
  fi
}

# score_and_record --e E --prefix P --ev STORE --tr TRAIN_STORE --train_dir T --top N --trials "LIST ..."
#                  --eval_dir D [--score_opts O] [--seen_trials S --seen_store SS --seen_dir SD --many M --few F
#                  --group_dir G] [--dev DEV --dev_store DS --dev_dir DD] [--tde_alpha A] [--scores_from SE]
# What stages 5 and 6 do for one system: score the trial lists (and the seen-speaker list) three ways
# (score_variants, rows PREFIX{cosine,mean_sub,asnorm}), the back-end on the dev list (backend_variants), and
# record the first list's and the seen list's rows in E/results.json. --scores_from SE records SE's score
# files instead of scoring (a decoupled system has its base's embeddings).
score_and_record() {
  local e prefix ev tr train_dir top trials eval_dir score_opts="" seen_trials="" seen_store="" seen_dir="" many="" \
    few="" group_dir="" dev="" dev_store="" dev_dir="" tde_alpha="" scores_from="" items st se alpha=()
  stage_args score_and_record "e prefix ev tr train_dir top trials eval_dir score_opts? seen_trials? seen_store? \
seen_dir? many? few? group_dir? dev? dev_store? dev_dir? tde_alpha? scores_from?" "$@"
  se=${scores_from:-$e}
  if [ -z "$scores_from" ]; then
    score_variants "$e" "$ev" "$tr" "$prefix" "$train_dir" "$top" "$trials" "$score_opts"
    items=(); for st in $trials; do items+=("$(basename "$st"):$ev:$eval_dir"); done
    if [ -n "$seen_trials" ]; then
      score_variants "$e" "$seen_store" "$tr" "$prefix" "$train_dir" "$top" "$seen_trials" ""
      items+=("$(basename "$seen_trials"):$seen_store:$seen_dir")
    fi
    [ -z "$dev" ] || backend_variants "$e" "$prefix" "$dev" "$dev_store" "$dev_dir" "$tr" "$train_dir" "$top" \
      "${items[@]}"
  fi
  [ -z "$tde_alpha" ] || alpha=(--tde-alpha "$tde_alpha")
  record_variants "$e" "$se" "$prefix" "$(basename "$(first_word "$trials")")" "$eval_dir/utt2spk" "${alpha[@]}"
  if [ -n "$seen_trials" ]; then
    record_variants "$e" "$se" "$prefix" "$(basename "$seen_trials")" "$seen_dir/utt2spk" \
      --seen "${group_dir:-$train_dir}" "$many" "$few" "${alpha[@]}"
  fi
}

# ---------------------------------------------------------------- stage 5: scoring (cosine, mean sub., AS-norm)
# stage_score --exp X --systems "S ..." --eval_dir D --train_dir T --trials "LIST ..." --asnorm_top N|SHARE|dev
#             [--score_opts "..."] [--seeds "K ..."] [--seen_trials LIST --seen_dir E --many N --few N]
#             [--dev_trials LIST --dev_dir V] [--group_dir G]
# Scores every trial list on the embeddings of D (mean and AS-norm cohort from those of T) and records the first
# list's figures (95% intervals over D's enrolment speakers) as rows cosine, mean_sub, asnorm of
# X/S/results.json; with --seen_trials, the seen-speaker list on E's embeddings too, recorded by shot group of
# the enrolment speaker (T's counts, or G's: the long-tail protocol's control groups by the long-tailed
# set's). With --dev_trials (the seen-speaker dev list on V's embeddings: no
# evaluation speaker), the back-end: AS-norm's top-N chosen on it when --asnorm_top is dev, calibration and QMF
# trained on it (rows asnorm_cal, asnorm_qmf: LLRs, with Cllr and actual DCF), and the calibrated threshold of
# `spkcausal verify`. A decoupled system has its base's embeddings: it records the base's score files, scoring
# nothing again. Marker: X/S/.done/5.
stage_score() {
  local exp systems eval_dir train_dir trials asnorm_top score_opts="" seeds="" seen_trials="" seen_dir="" many="" \
    few="" dev_trials="" dev_dir="" group_dir="" e se ev tr top ds scores line name kind system seed parent control causal method conf run
  stage_args stage_score "exp systems eval_dir train_dir trials asnorm_top score_opts? seeds? seen_trials? \
seen_dir? many? few? dev_trials? dev_dir? group_dir?" "$@"
  [ -z "$seen_trials" ] || { [ -n "$seen_dir" ] && [ -n "$many" ] && [ -n "$few" ]; } ||
    die "stage_score: --seen_trials needs --seen_dir --many --few"
  [ -z "$dev_trials" ] || [ -n "$dev_dir" ] || die "stage_score: --dev_trials needs --dev_dir"
  [ -f "$dev_trials" ] || dev_trials=""  # stage 2 could not build it (one val utterance per speaker): no back-end
  plan_runs "$systems" "$seeds"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    e="$exp/$name" se="$exp/$name" scores=()
    [ "$kind" != decoupled ] || se="$exp/$parent"
    if is_done "$e" 5; then skip_msg 5 "score $name" "$e"; continue; fi
    ev="$e/emb/$(basename "$eval_dir")"; tr="$e/emb/$(basename "$train_dir")"
    ds=""; [ -z "$dev_trials" ] || ds="$e/emb/$(basename "$dev_dir")"
    if [ "$se" = "$e" ]; then
      top=$(asnorm_top_of "$e" "$asnorm_top" "$dev_trials" "$ds" "$tr" "$train_dir")
    else
      is_done "$se" 5 || die "stage_score: $name reuses the scores of $se: score that system first"
      log "stage 5: $name has the embeddings of $(basename "$se"): its verification rows are that system's"
      top="" scores=(--scores_from "$se")
    fi
    score_and_record --e "$e" --prefix "" --ev "$ev" --tr "$tr" --train_dir "$train_dir" --top "$top" \
      --trials "$trials" --eval_dir "$eval_dir" --score_opts "$score_opts" --seen_trials "$seen_trials" \
      --seen_store "$e/emb/$(basename "$seen_dir")" --seen_dir "$seen_dir" --many "$many" --few "$few" \
      --group_dir "$group_dir" --dev "$dev_trials" --dev_store "$ds" --dev_dir "$dev_dir" "${scores[@]}"
    [ "$se" != "$e" ] || [ -z "$dev_trials" ] || verify_threshold "$e" "$dev_trials" "$ds"
    mark_done "$e" 5
  done
  stage_finished 5
}

# ---------------------------------------------------------------- stage 6: TDE alpha on a dev set, TDE scoring
# stage_tde --exp X --systems "S ..." --val_dir V --eval_dir D --train_dir T --trials "LIST ..." --asnorm_top N
#           [--score_opts "..."] [--seeds "K ..."] [--alphas "0,0.25,..."] [--alpha_on iden_val|dev_eer|dev_min_dcf]
#           [--dev_trials "LIST ..." --dev_trials_dirs "DIR ..."] [--seen_trials LIST --seen_dir E --many N --few N]
#           [--group_dir G]   (shot groups of the seen rows by G's counts instead of T's, as in stage_score)
# Causal Norm systems only: alpha chosen on a dev set, never on the test trials: by default (--alpha_on
# iden_val) identification accuracy on the iden val split V; dev_eer / dev_min_dcf: EER / minDCF(0.01) on the
# first dev trial list (e.g. the seen-speaker dev list on V), whose keys are in the store of the matching dir of
# --dev_trials_dirs (default V). The grid is --alphas or else the library's (0 to 3 by 0.25), plus the
# 1/mean-cos heuristic on T's embeddings; every dev list's EER / minDCF curve is recorded. Then TDE'd stores of
# D, T (and E) and the three scorings again (rows tde, tde_mean_sub, tde_asnorm), and with a dev list stage 5's
# back-end on the TDE'd AS-norm scores (rows tde_asnorm_cal, tde_asnorm_qmf). --asnorm_top dev reuses stage 5's
# choice (X/S/asnorm_top.json). Marker: X/S/.done/6.
stage_tde() {
  local exp systems val_dir eval_dir train_dir trials asnorm_top score_opts="" seeds="" dev_trials="" \
    dev_trials_dirs="" alphas="" alpha_on=iden_val seen_trials="" seen_dir="" many="" few="" group_dir="" e ev \
    tr sv alpha grid dev dd i d lists stores dirs top line name kind system seed parent control causal method conf run
  stage_args stage_tde "exp systems val_dir eval_dir train_dir trials asnorm_top score_opts? seeds? dev_trials? \
dev_trials_dirs? alphas? alpha_on? seen_trials? seen_dir? many? few? group_dir?" "$@"
  grid=(); [ -z "$alphas" ] || grid=(--alphas "$alphas")
  case "$alpha_on" in iden_val|dev_eer|dev_min_dcf) ;; *) die "stage_tde: --alpha_on $alpha_on (iden_val, dev_eer, dev_min_dcf)" ;; esac
  [ "$alpha_on" = iden_val ] || [ -n "$dev_trials" ] || die "stage_tde: --alpha_on $alpha_on needs --dev_trials"
  read -ra dd <<< "$dev_trials_dirs"
  plan_runs "$systems" "$seeds" "" "$exp"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    [ "$kind" != decoupled ] || continue
    e="$exp/$name"
    if ! has_tde; then log "stage 6: $name has no Causal Norm head: no TDE"; continue; fi
    if is_done "$e" 6; then skip_msg 6 "TDE $name" "$e"; continue; fi
    dev=(); lists=(); stores=(); dirs=(); i=0
    for d in $dev_trials; do  # a dev list stage 2 could not build (e.g. one val utterance per speaker) is left out
      if [ -f "$d" ]; then
        lists+=("$d"); dirs+=("${dd[$i]:-$val_dir}"); stores+=("$e/emb/$(basename "${dd[$i]:-$val_dir}")")
      fi
      i=$((i + 1))
    done
    [ ${#lists[@]} -gt 0 ] && dev=(--trials "${lists[@]}" --trials-emb "${stores[@]}")
    # the printed curve and choice are kept: its last line `alpha A` is what this stage and stage 7 use
    spkcausal tde-alpha --exp "$e" --emb "$e/emb/$(basename "$val_dir")" --data "$val_dir" "${dev[@]}" \
      --criterion "$alpha_on" --heuristic-emb "$e/emb/$(basename "$train_dir")" "${grid[@]}" \
      --out "$e/tde_alpha.json" | tee "$e/tde_alpha.txt"
    alpha=$(tde_alpha_of "$e")
    log "stage 6: $name: TDE alpha $alpha (by $alpha_on; dev curves in $e/tde_alpha.json)"
    ev="$e/emb/$(basename "$eval_dir")"; tr="$e/emb/$(basename "$train_dir")"
    sv=(); [ -z "$seen_trials" ] || sv=("$e/emb/$(basename "$seen_dir")=$e/emb/$(basename "$seen_dir")_tde")
    [ ${#lists[@]} -eq 0 ] || sv+=("${stores[0]}=${stores[0]}_tde")  # the back-end's dev list
    spkcausal tde-apply --alpha "$alpha" "$ev=${ev}_tde" "$tr=${tr}_tde" "${sv[@]}"
    top=$(asnorm_top_of "$e" "$asnorm_top" "${lists[0]:-}" "${stores[0]:-}" "$tr" "$train_dir")
    score_and_record --e "$e" --prefix tde_ --ev "${ev}_tde" --tr "${tr}_tde" --train_dir "$train_dir" \
      --top "$top" --trials "$trials" --eval_dir "$eval_dir" --score_opts "$score_opts" \
      --seen_trials "$seen_trials" --seen_store "$e/emb/$(basename "$seen_dir")_tde" --seen_dir "$seen_dir" \
      --many "$many" --few "$few" --group_dir "$group_dir" --dev "${lists[0]:-}" \
      --dev_store "${stores[0]:+${stores[0]}_tde}" --dev_dir "${dirs[0]:-}" --tde_alpha "$alpha"
    mark_done "$e" 6
  done
  stage_finished 6
}

# ---------------------------------------------------------------- stage 7: closed-set identification
# stage_identify --exp X --systems "S ..." --test_dir E --train_dir T --many N --few N [--seeds "K ..."]
#                [--group_dir G]   (shot groups by G's counts instead of T's, as in stage_score)
# Identification of E's utterances with the trained head: plain logits, after subtracting T's mean embedding,
# and (Causal Norm systems) TDE logits with stage 6's alpha; shot groups Many > N, Few < N training
# utterances; per-speaker 95% intervals, per-utterance predictions kept in X/S/predictions/ (the report pairs
# systems on them). Marker: X/S/.done/7.
stage_identify() {
  local exp systems test_dir train_dir many few seeds="" group_dir="" e var tde line name kind system seed parent control causal method conf run
  stage_args stage_identify "exp systems test_dir train_dir many few seeds? group_dir?" "$@"
  plan_runs "$systems" "$seeds" "" "$exp"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    e="$exp/$name"
    if is_done "$e" 7; then skip_msg 7 "identify $name" "$e"; continue; fi
    var=(cosine mean_sub); tde=()
    if has_tde; then var+=(tde); tde=(--tde-alpha "$(tde_alpha_of "$e")"); fi
    spkcausal identify --exp "$e" --emb "$e/emb/$(basename "$test_dir")" --data "$test_dir" \
      --train-data "${group_dir:-$train_dir}" --mean-store "$e/emb/$(basename "$train_dir")" "${tde[@]}" \
      --many "$many" --few "$few" --variants "${var[@]}" --record "$e" --out "$e/identification.json"
    mark_done "$e" 7
  done
  stage_finished 7
}

# ---------------------------------------------------------------- stage 8: report tables + DET curves
# stage_report --exp X --systems "S ..." --trials "LIST ..." [--caption TEXT] [--seeds "K ..."]
#              [--baseline SYSTEM] [--per_seed true|false]
# X/report.md (printed) and report.json over the systems: figures with 95% intervals (one seed) or mean ± std
# (several), and the differences of every system from its reference (the baseline, default the first system;
# a TDE row: the same system without TDE) with paired intervals. DET curves of the first list (first seed).
# The marker X/.done/8 records which experiments the table covers: another --systems list makes a new table.
stage_report() {
  local exp systems trials caption="" seeds="" baseline="" per_seed=false t e dets=() labels=() exps=() first \
    opts=() line name kind system seed parent control causal method conf run
  stage_args stage_report "exp systems trials caption? seeds? baseline? per_seed?" "$@"
  t=$(basename "$(first_word "$trials")")
  first=$(first_word "$seeds")
  plan_runs "$systems" "$seeds"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    e="$exp/$name"; exps+=("$e")
    [ "$seed" = "$first" ] || continue
    [ "$kind" != decoupled ] || continue  # the base's embeddings: the same curve
    dets+=("$e/scores/cosine/$t.score"); labels+=("$name")
    if [ -f "$e/scores/tde_cosine/$t.score" ]; then dets+=("$e/scores/tde_cosine/$t.score"); labels+=("$name+TDE"); fi
  done
  [ -z "$baseline" ] || opts+=(--baseline "$baseline")
  [ "$per_seed" != true ] || opts+=(--per-seed)
  if is_done "$exp" 8 && [ "$(cat "$(done_file "$exp" 8)")" = "${exps[*]} ${opts[*]}" ]; then
    skip_msg 8 report "$exp"; cat "$exp/report.md"
  else
    spkcausal plot-det "${dets[@]}" --labels "${labels[@]}" --out "$exp/det_${t%.*}.png"
    spkcausal report "${exps[@]}" --out "$exp" ${caption:+--caption "$caption"} "${opts[@]}"
    mark_done "$exp" 8 "${exps[*]} ${opts[*]}"
  fi
  stage_finished 8
}
