#!/usr/bin/env bash
# prepare_data.sh VOX1_ROOT VOX2_ROOT DATA NJ: VoxCeleb1 data dirs + trial lists; VoxCeleb2 decoded to wav
# (resumable: wavs already decoded are skipped) when VOX2_ROOT is given.
set -euo pipefail
vox1_root=$1 vox2_root=$2 data=$3 nj=$4
if [ -z "$vox1_root" ]; then echo "prepare_data.sh: --vox1_root is required (trial lists)" >&2; exit 1; fi
spkcausal prepare voxceleb1 --root "$vox1_root" --out "$data" --nj "$nj"
if [ -n "$vox2_root" ]; then
  spkcausal prepare voxceleb2 --root "$vox2_root" --out "$data" --nj "$nj"
fi
