# Stage bodies shared by every recipe; sourced by each recipe's run.sh (its stages 1-2) and run_stages.sh (3-8).
# A function takes every input as a named argument (`stage_train --exp "$exp" --systems "$systems" ...`) and reads
# nothing else but set_launcher's torchrun settings; a missing, unknown or valueless argument stops the recipe in
# one line. Systems are config names (conf_dir/<name>.yaml), YAML paths, or BASE+lm / BASE+crt|tau_norm|ncm|lws|
# oltr / BASE+control; the stages loop over their runs in `spkcausal plan` (plan_runs); a BASE+control run (the
# long-tail protocol) trains on --control_dir, its shot groups stay --train_dir's. Stages 4 (decoupled) to 7 are
# `spkcausal stage ...` (spkcausal/pipeline), one process each. Lists are space-separated. Every stage writes its
# outputs, then a marker `.done/<stage>` (atomically); a stage whose marker exists is skipped (delete it to redo).

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
  for _n in "${_names[@]}"; do [[ $_n == *\? ]] || [ -n "${!_n+set}" ] || die "$_fn: --$_n is required"; done
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

first_word() { echo "$1" | awk '{print $1; exit}'; }

# ---------------------------------------------------------------- stage 2: held-out split + long-tail profile
# stage_profile --data D --train_dir T --val_dir V --test_dir E --many N --few N
#               [--split_src S --imbalance R --val_per_speaker N --test_per_speaker N --seed N] [--control_dir C]
# With --split_src, S is split into T / V / E first (R > 1: T is an ImageNet-LT-style long-tailed subset, and
# --control_dir writes its balanced control C, protocol.sh); without it T / V / E exist already. Marker: D/.done/2.
stage_profile() {
  local data train_dir val_dir test_dir many few split_src="" imbalance="" val_per_speaker="" test_per_speaker="" seed="" \
    control_dir="" ctl=() src=()
  stage_args stage_profile "data train_dir val_dir test_dir many few split_src? imbalance? val_per_speaker? \
test_per_speaker? seed? control_dir?" "$@"
  if is_done "$data" 2; then
    skip_msg 2 profile "$data"
  else
    if [ -n "$split_src" ]; then
      local v
      for v in imbalance val_per_speaker test_per_speaker seed; do
        [ -n "${!v}" ] || die "stage_profile: --split_src needs --$v"; done
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
    [ -z "$split_src" ] || src=("$split_src" "$(basename "$split_src")")
    spkcausal plot-longtail "$data/profile" "${src[@]:0:1}" --labels training "${src[@]:1}" --out "$data/longtail.png"
    mark_done "$data" 2
  fi
  stage_finished 2
}

# ---------------------------------------------------------------- seen-speaker trial lists (stage 2)
# stage_seen_trials --data D --test_dir E --val_dir V --train_dir T --many N --few N --num_trials N
#                   --target_ratio R --seed S [--same_session_ok true|false]
# Trial lists on held-out utterances of the *training* speakers: D/trials/seen_test on the iden test split E
# (reported by shot group) and D/trials/seen_dev on the iden val split V (the dev list of the back-end and TDE).
# spkcausal make-trials --fit: seeded, targets from different sessions where there is utt2sess (unless
# --same_session_ok true), at most N trials (non-targets at ratio R); counts per group in D/trials/*.counts.
# Marker: D/.done/seen_trials.
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
# plan_runs SYSTEMS SEEDS [CONF_DIR] [EXP]: RUNS = the lines of `spkcausal plan` (one run each, PLAN_FIELDS: see
# `spkcausal plan --help`). run_fields LINE sets those fields as the caller's locals (seed "" when none).
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
run_train() {  # run_train T C: the caller's `train` = the dir the last run_fields' run trains on (a control run: C)
  train=$1; [ "$control" = true ] || return 0
  [ -n "$2" ] && [ -n "$1" ] || die "$name is the protocol's balanced control: it needs --train_dir and --control_dir"
  train=$2
}

# ---------------------------------------------------------------- stage 3: training (torchrun)
# training_overrides [KEY=VALUE ...]: the overrides stage 3 gives every system, in the order they apply: the
# recipe's own (the arguments), --musan / --rirs, the user's --train_overrides (so that they win), --init_from.
training_overrides() {
  echo "$* ${musan:+augment.musan=$musan} ${rirs:+augment.rirs=$rirs} $train_overrides" \
    "${init_from:+train.init_from=$init_from}"
}

# stage_train --exp X --systems "S ..." --conf_dir C --train_dir T [--overrides "key=value ..."] [--seeds "K ..."]
#             [--lm_conf FILE --num_avg N] [--control_dir CT]
# Trains each system (once per seed) on T (BASE+control on CT): `spkcausal train --config C/S.yaml exp_dir=X/S
# data.train=T OVERRIDES [seed=K]` (merged config: X/S/config.yaml). Then the BASE+lm systems: BASE's last N
# epochs averaged (X/BASE/avg_model.pt), fine-tuned in X/BASE_lm with BASE's config, the LM overlay (--lm_conf),
# the overrides, and train.init_from=X/BASE/avg_model.pt train.init_head=true. Marker: X/S/.done/3.
stage_train() {
  local exp systems conf_dir train_dir overrides="" seeds="" lm_conf="" num_avg="" control_dir="" pass e b lm init \
    train line name kind system seed parent control causal method conf run
  stage_args stage_train "exp systems conf_dir train_dir overrides? seeds? lm_conf? num_avg? control_dir?" "$@"
  plan_runs "$systems" "$seeds" "$conf_dir"
  for pass in train lm; do  # the +lm runs after their parents
    for line in "${RUNS[@]}"; do
      run_fields "$line"
      [ "$kind" = "$pass" ] || continue
      e="$exp/$name" lm=() init=()
      run_train "$train_dir" "$control_dir"
      if is_done "$e" 3; then skip_msg 3 "train $name" "$e"; continue; fi
      if [ "$kind" = lm ]; then
        b="$exp/$parent"
        [ -n "$lm_conf" ] && [ -n "$num_avg" ] || die "stage_train: $name needs --lm_conf and --num_avg"
        is_done "$b" 3 || die "stage_train: $name fine-tunes $b, which is not trained (add its system to --systems)"
        spkcausal average-ckpt --exp "$b" --num "$num_avg" > /dev/null
        log "stage 3: large-margin fine-tuning $name from $b/avg_model.pt ($lm_conf)"
        lm=(--config "$lm_conf") init=(train.init_from="$b/avg_model.pt" train.init_head=true)
      else
        log "stage 3: training $name ($conf) on $train"
      fi
      # --resume continues an interrupted run from its newest checkpoint (a fresh start when there is none)
      # shellcheck disable=SC2086
      launch train --config "$conf" "${lm[@]}" --plan-run "$run" --resume exp_dir="$e" data.train="$train" \
        $overrides ${seed:+seed=$seed} "${init[@]}"
      mark_done "$e" 3
    done
  done
  stage_finished 3
}

# ---------------------------------------------------------------- stage 4: checkpoint averaging + extraction
# stage_extract --exp X --systems "S ..." --num_avg N --dirs "D ..." --mode exact|bucket|pad|crop --workers N|""
#               [--seeds "K ..."] [--train_dir T --val_dir V] [--lm_num_avg M] [--control_dir CT]
# Averages the last N epoch checkpoints (M for the BASE+lm systems) into X/S/avg_model.pt, then writes the raw
# (not TDE'd) embeddings of every data dir D (a control run: CT for T) to X/S/emb/<basename D>. Then the
# decoupled systems BASE+METHOD: `spkcausal decouple` on the base's embeddings of T (tau_norm: tau chosen on V),
# X/BASE_METHOD/emb linking to the base's stores. Marker: X/S/.done/4.
stage_extract() {
  local exp systems num_avg dirs mode workers seeds="" train_dir="" val_dir="" lm_num_avg="" control_dir="" e b n d w \
    train line name kind system seed parent control causal method conf run
  stage_args stage_extract "exp systems num_avg dirs mode workers seeds? train_dir? val_dir? lm_num_avg? control_dir?" \
    "$@"
  plan_runs "$systems" "$seeds"
  for line in "${RUNS[@]}"; do
    run_fields "$line"
    [ "$kind" != decoupled ] || continue
    e="$exp/$name"
    if is_done "$e" 4; then skip_msg 4 "extract $name" "$e"; continue; fi
    n=$num_avg; [ "$kind" != lm ] || n=${lm_num_avg:-$num_avg}
    run_train "$train_dir" "$control_dir"
    d=""; for w in $dirs; do [ "$w" != "$train_dir" ] || w=$train; d+="${d:+ }$w"; done
    spkcausal average-ckpt --exp "$e" --num "$n"
    # shellcheck disable=SC2086
    launch extract-dirs --exp "$e" --data $d --out-dir "$e/emb" --mode "$mode" ${workers:+--num-workers "$workers"}
    mark_done "$e" 4
  done
  spkcausal stage decouple --exp "$exp" --systems "$systems" --seeds "$seeds" --train_dir "$train_dir" \
    --val_dir "$val_dir" || exit
  stage_finished 4
}

# ------------- stages 5-7 (scoring + back-end, TDE, identification): `spkcausal stage ... --help`, docs/recipes.md
stage_score() { spkcausal stage score "$@" || exit; stage_finished 5; }
stage_tde() { spkcausal stage tde "$@" || exit; stage_finished 6; }
stage_identify() { spkcausal stage identify "$@" || exit; stage_finished 7; }

# ---------------------------------------------------------------- stage 8: report tables + DET curves
# stage_report --exp X --systems "S ..." --trials "LIST ..." [--caption TEXT] [--seeds "K ..."]
#              [--baseline SYSTEM] [--per_seed true|false]
# X/report.md (printed) and report.json over the systems (spkcausal report), DET curves of the first list (first
# seed). The marker X/.done/8 records which experiments the table covers: another --systems list makes a new table.
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
