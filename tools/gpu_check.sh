#!/usr/bin/env bash
# The GPU checks as one prepared script (docs/scale.md, "The GPU checks"): the CUDA tests, batched Fbank against
# the torchaudio loop, the training pipeline against the model-only step (ECAPA-1024 and ResNet34, 256 x 200,
# bf16) and extraction against SpeechBrain's EncoderClassifier loop, each step capped in time so that the whole
# run fits in one device call (10 minutes) and normally leaves a 15-minute lease room for a second try.
#
#   bash tools/gpu_check.sh --wheels     here, once: the packages the GPU image lacks (soundfile, speechbrain, ...)
#                                        as Python 3.12 wheels in .whl/ (git-ignored; about 4 MB)
#   bash tools/gpu_check.sh              there: device run, command "bash tools/gpu_check.sh", carry [".whl"],
#                                        timeout_s 600; the log and the extraction JSON land in $OUT
#   bash tools/gpu_check.sh --rehearse   here, on the CPU with .venv: every step at smoke size (checks the script)
#
# Every step runs even when one before it failed; the summary at the end gives each step's exit status and
# seconds, then the benchmarks' figure lines, so the reply's output tail holds what the closing note needs.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-gpu}"

# The image's packages (the device tool's KINDS.md) lack these; versions as the project's .venv resolves them.
WHEELS="soundfile cffi pycparser speechbrain hyperpyyaml ruamel.yaml ruamel.yaml.clib kaldiio"

if [ "$mode" = --wheels ]; then
  py="$(bash tools/setup_env.sh)"
  rm -rf .whl && mkdir -p .whl
  for name in $WHEELS; do
    version="$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")" || exit 1
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version" || exit 1
  done
  du -sh .whl && ls .whl
  exit 0
fi

case "$mode" in
  gpu)
    py=python3
    if compgen -G ".whl/*.whl" >/dev/null; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    out="${OUT:-$root/gpu_check_out}"
    device=cuda fbank_devices=cpu,cuda
    train_args=(--gpu-preset)
    extract_args=(--device cuda --repeats 3 --modes exact,bucket)
    caps=(240 60 150 90)
    ;;
  --rehearse)
    py="$(bash tools/setup_env.sh)"
    out="$(mktemp -d /tmp/gpu_check_rehearsal.XXXXXX)"
    device=cpu fbank_devices=cpu
    train_args=(--models resnet_tiny --batch-size 8 --steps 5 --warmup 1 --num-files 40 --fbank-utts 8
                --fbank-runs 2 --num-workers 1)
    extract_args=(--quick --modes exact,bucket)
    caps=(300 60 120 120)
    ;;
  *) echo "usage: bash tools/gpu_check.sh [--wheels | --rehearse]" >&2; exit 2 ;;
esac
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 MPLBACKEND=Agg
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
summary=()

step() {  # step NAME CAP_SECONDS COMMAND...: run it under a time cap, log it, remember its status and seconds
  local name="$1" cap="$2"; shift 2
  echo "=== $name (cap ${cap} s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-8s rc %-3s %4d s' "$name" "$rc" $((SECONDS - t0)))")
}

{ date -u; uname -m; nproc; uptime; command -v nvidia-smi >/dev/null && nvidia-smi -L; } 2>&1 | tee -a "$log"
step env 60 "$py" -c "
import sys, torch, torchaudio, numpy, soundfile, speechbrain, spkcausal
print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchaudio', torchaudio.__version__,
      '| numpy', numpy.__version__, '| soundfile', soundfile.__version__, '| speechbrain', speechbrain.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')
"
# The tests that need a GPU (they skip without one), found by what marks them.
cuda_tests=$(grep -l "cuda.is_available" tests/test_*.py | tr '\n' ' ')
# shellcheck disable=SC2086
step tests "${caps[0]}" "$py" -m pytest -q -p no:cacheprovider $cuda_tests -k cuda
step fbank "${caps[1]}" "$py" tools/bench_fbank.py --devices "$fbank_devices"
step train "${caps[2]}" "$py" tools/bench_train.py --device "$device" "${train_args[@]}"
step extract "${caps[3]}" "$py" tools/bench_extract.py "${extract_args[@]}" --json "$out/extract.json"

echo "=== summary ($out)" | tee -a "$log"
printf '%s\n' "${summary[@]}" | tee -a "$log"
grep -E "^(== |device:|batched Fbank on|speed-up|  \(|[a-z0-9_]+ +\([0-9.]+M\)|\| (spkcausal|SpeechBrain))|\
[0-9]+ (passed|failed|skipped)|worst cosine|Paired timing|Error" "$log" | tee "$out/summary.txt"
! printf '%s\n' "${summary[@]}" | grep -qv " rc 0 "
