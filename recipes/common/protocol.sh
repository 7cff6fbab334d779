# The long-tail protocol (`--protocol lt --imbalance R`): what the long tail costs, as ImageNet-LT measures it.
# Sourced by the recipes after stages.sh. The training dir becomes the long-tailed subset at imbalance R
# (spkcausal longtail-subset), and a balanced control is drawn beside it: the same speakers and number of
# utterances, spread evenly over the speakers (water-filling), total hours within 5% (docs/recipes.md). Every
# system trains on the long-tailed subset as usual; the baseline (the first system) trains on the control too,
# as system <baseline>+control (runs exp/<baseline>_control[_seed<k>]; their run.json marks them), and
# the report adds the table "Tail cost": baseline minus control, and the share of it each method recovers.
#
#   protocol_setup PROTOCOL IMBALANCE EXP SYSTEMS CONF_DIR CONTROL_DIR
#       "" (off) or lt. Sets PROTOCOL_CONTROL_DIR, PROTOCOL_CONTROL_SYS (<baseline>+control: the baseline's
#       config, run by the plan as the control, spkcausal plan) and
#       PROTOCOL_PROFILE_ARGS (stage_profile's --control_dir); all empty when off. run_stages.sh adds the control
#       system to the systems of stages 3-8 and passes --control_dir: a run the plan marks `control` trains on
#       the control dir, and its seen-speaker and identification rows keep the shot groups of the long-tailed
#       dir (--train_dir), so that "Few" means the same speakers for both.
#   protocol_subset DATA POOL TRAIN_DIR IMBALANCE SEED
#       the demo's stage 2 (its synthetic pool has the held-out split already): TRAIN_DIR = the long-tailed
#       subset of POOL (no utterance held out), PROTOCOL_CONTROL_DIR its control. Marker: DATA/.done/protocol.

PROTOCOL_CONTROL_DIR="" PROTOCOL_CONTROL_SYS="" PROTOCOL_PROFILE_ARGS=()

protocol_setup() {
  local protocol=$1 imbalance=$2 exp=$3 systems=$4 conf_dir=$5 control_dir=$6 base src
  case "$protocol" in
    "") return 0 ;;
    lt) ;;
    *) die "--protocol $protocol: expected lt (or nothing)" ;;
  esac
  awk -v r="$imbalance" 'BEGIN {exit !(r > 1)}' || die "--protocol lt needs --imbalance R > 1, got $imbalance"
  base=$(first_word "$systems")
  case "$base" in *+*) die "--protocol lt: the first system ($base) must be a trained config, the baseline" ;; esac
  case "$base" in *.yaml|*.yml) src=$base ;; *) src="$conf_dir/$base.yaml" ;; esac
  [ -f "$src" ] || die "--protocol lt: no config $src for the baseline $base"
  PROTOCOL_CONTROL_SYS="$base+control"
  PROTOCOL_CONTROL_DIR=$control_dir
  PROTOCOL_PROFILE_ARGS=(--control_dir "$control_dir")
  log "protocol lt: imbalance $imbalance; $(basename "$base" .yaml) also trains on the balanced control $control_dir"
}

protocol_subset() {
  local data=$1 pool=$2 train_dir=$3 imbalance=$4 seed=$5
  [ -n "$PROTOCOL_CONTROL_DIR" ] || return 0
  if is_done "$data" protocol; then skip_msg protocol "long-tailed subset + control" "$data"; return 0; fi
  spkcausal longtail-subset "$pool" --out-train "$train_dir" --out-heldout "$data/protocol_heldout" \
    --imbalance "$imbalance" --heldout-per-spk 0 --seed "$seed" --control "$PROTOCOL_CONTROL_DIR" > /dev/null
  mark_done "$data" protocol
}
