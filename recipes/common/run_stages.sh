# Stages 3-8, the same for every corpus: sourced by recipes/<corpus>/run.sh after its options, stages.sh,
# protocol.sh (protocol_setup) and its own stages 1-2. It reads the recipe's variables:
#   stage stop_stage exp systems seeds conf_dir overrides lm_conf num_avg lm_num_avg extract_mode extract_workers
#   train_dir val_dir test_dir eval_dir trials seen_test seen_dev asnorm_top alphas alpha_on many few
#   caption baseline per_seed
# and, where a corpus has them, enroll_map (the lists' enrolments as means of segments: CN-Celeb's Avg) and
# dev_lists / dev_dirs (more labelled dev lists for stage 6's curves, and the dirs of their keys, extracted in
# stage 4: LibriSpeech's dev-clean). With the long-tail protocol the control system (protocol.sh) joins the
# systems; the plan marks its runs, which train on the control dir.
all_systems="$systems${PROTOCOL_CONTROL_SYS:+ $PROTOCOL_CONTROL_SYS}"
ctl=(); [ -z "$PROTOCOL_CONTROL_DIR" ] || ctl=(--control_dir "$PROTOCOL_CONTROL_DIR")
runs_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
run_args=(--exp "$exp" --systems "$all_systems" --seeds "$seeds" --train_dir "$train_dir" "${ctl[@]}")
list_args=(--eval_dir "$eval_dir" --trials "$trials" --asnorm_top "$asnorm_top" --enroll_map "${enroll_map:-}"
  --seen_trials "$seen_test" --seen_dir "$test_dir" --many "$many" --few "$few")

if runs_stage 3; then
  stage_train "${run_args[@]}" --conf_dir "$conf_dir" --overrides "$overrides" --lm_conf "$lm_conf" \
    --num_avg "$num_avg"
fi

if runs_stage 4; then
  stage_extract "${run_args[@]}" --num_avg "$num_avg" --lm_num_avg "$lm_num_avg" --val_dir "$val_dir" \
    --dirs "$train_dir $val_dir $test_dir $eval_dir${dev_dirs:+ $dev_dirs}" --mode "$extract_mode" \
    --workers "$extract_workers"
fi

if runs_stage 5; then
  stage_score "${run_args[@]}" "${list_args[@]}" --dev_trials "$seen_dev" --dev_dir "$val_dir"
fi

if runs_stage 6; then
  stage_tde "${run_args[@]}" "${list_args[@]}" --val_dir "$val_dir" --alphas "$alphas" --alpha_on "$alpha_on" \
    --dev_trials "$seen_dev${dev_lists:+ $dev_lists}" --dev_trials_dirs "$val_dir${dev_dirs:+ $dev_dirs}"
fi

if runs_stage 7; then
  stage_identify "${run_args[@]}" --test_dir "$test_dir" --many "$many" --few "$few"
fi

if runs_stage 8; then
  stage_report --exp "$exp" --systems "$all_systems" --trials "$trials" --caption "$caption" --seeds "$seeds" \
    --baseline "$baseline" --per_seed "$per_seed"
fi
