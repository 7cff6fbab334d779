#!/usr/bin/env bash
# Kaldi / wespeaker-style option parsing, to be *sourced* by a recipe after it sets its defaults:
#
#   stage=1; stop_stage=7; gpus=""      # every option is a shell variable with a default
#   . tools/parse_options.sh            # "--stop_stage 3" or "--stop-stage=3" sets stop_stage=3
#
# Rules: an option must name a variable that already exists (typos are errors, not silently new variables);
# dashes in names become underscores; "--name value" and "--name=value" both work; a boolean default
# (true/false) accepts only true or false; "--help" / "-h" prints the script's leading comment block.
# Positional arguments that follow the options are left in "$@".

_po_usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) _po_usage; exit 0 ;;
    --) shift; break ;;
    --*=*) _po_name="${1%%=*}"; _po_val="${1#*=}"; shift ;;
    --*)
      _po_name="$1"
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _po_val="$2"; shift 2 ;;
    *) break ;;
  esac
  _po_name="${_po_name#--}"
  _po_name="${_po_name//-/_}"
  if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    echo "$0: invalid option name --$_po_name" >&2; exit 1
  fi
  if [ -z "${!_po_name+set}" ]; then
    echo "$0: unknown option --$_po_name (see --help)" >&2; exit 1
  fi
  _po_old="${!_po_name}"
  if { [ "$_po_old" = true ] || [ "$_po_old" = false ]; } && [ "$_po_val" != true ] && [ "$_po_val" != false ]; then
    echo "$0: --$_po_name expects true or false, got '$_po_val'" >&2; exit 1
  fi
  printf -v "$_po_name" '%s' "$_po_val"
done
unset _po_name _po_val _po_old
true
