#!/usr/bin/env bash
# One GPU session's checks in order of value, each under its own time limit, every log and result under $OUT:
#   check    the lossless matrix and the bundled pairs in float32 and bfloat16 (gpu_check.py)
#   preset   the 7B calibrated-agreement pair, one prompt, against HF eager and HF compiled static-cache generate
#   batched  the same pair on batches of BATCHES prompts (bench_gpu_preset.py --batches)
#   draft-kv one draft decode step with all vs 10 % of 8k-16k visual tokens in its cache, 3B and 7B (bench_draft_kv.py)
# A step stopped by its limit keeps what it printed (both scripts print each result as it comes). Each step records
# its table into docs/BENCHMARKS.md there, copied back as $OUT/BENCHMARKS.md (not in QUICK mode).
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh                        # on the GPU machine, from the repo root
#   OUT=/tmp/gpu QUICK=1 bash benchmarks/gpu_session.sh                # the same steps at tiny size, anywhere
#   OUT=/tmp/gpu STEPS="preset batched" bash benchmarks/gpu_session.sh  # some steps
#
# Durations on one H200 (2026-12-04, BENCHMARKS `lossless-check-cuda`, `gpu-preset-7b`): machine start ~30 s; check
# ~230 s (205 outputs in 200 s); preset ~120 s (an estimate from its rows: the log has no times; its compile 46 s);
# batched 8 did not end in the ~220 s left to it
# (it compiled a graph per row bucket as rows finished; a generate batch now keeps its starting bucket: 3 graphs more).
# A session has 15 minutes of device time and one command at most 10: limits (seconds) and sizes can be set from the
# environment: CHECK_S, PRESET_S, BATCHED_S, DRAFT_KV_S, SHAPE, BATCHES, PROMPT_TOKENS. The check passed once
# (2026-12-04): a session short of time can run STEPS="preset batched draft-kv" in one call.
# The device has the user's own torch and transformers, so nothing is installed: src/ is put on PYTHONPATH.
set -u
OUT=${OUT:?set OUT to the folder for logs and results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
STEPS=${STEPS:-check preset batched draft-kv}
if [ -n "${QUICK:-}" ]; then
  CHECK_ARGS="--quick"; SHAPE=${SHAPE:-tiny}; PROMPT_TOKENS=${PROMPT_TOKENS:-256}; BATCHES=${BATCHES:-2}
  PRESET_EXTRA="--max-new-tokens 16 --repeats 2"; RECORD=""; DRAFT_KV_ARGS="--visual 512 --steps 2"
else
  CHECK_ARGS=""; SHAPE=${SHAPE:-7b}; PROMPT_TOKENS=${PROMPT_TOKENS:-4096}; BATCHES=${BATCHES:-8}; PRESET_EXTRA=""
  DRAFT_KV_ARGS=""
  RECORD="--record"
fi

for name in $STEPS; do  # a misspelt step is found before any runs
  case $name in
    check | preset | batched | draft-kv) ;;
    *) echo "gpu_session.sh: unknown step $name (check, preset, batched, draft-kv)" >&2; exit 2 ;;
  esac
done

step() {  # step NAME LIMIT COMMAND...: runs COMMAND under LIMIT seconds into $OUT/NAME.log, prints its end
  local name=$1 limit=$2 started rc
  shift 2
  started=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - started))s"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; $PY -c '
import torch, transformers, specvlm
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())
print(\"transformers\", transformers.__version__, \"specvlm\", specvlm.__version__)'"
preset() {  # preset NAME LIMIT BATCHES
  step "$1" "$2" "$PY" benchmarks/bench_gpu_preset.py --shape "$SHAPE" --prompt-tokens "$PROMPT_TOKENS" --batches "$3" \
    $PRESET_EXTRA --json "$OUT/$1.json" $RECORD
}
for name in $STEPS; do
  case $name in
    check) step check "${CHECK_S:-250}" "$PY" benchmarks/gpu_check.py $CHECK_ARGS --json "$OUT/check.json" $RECORD ;;
    preset) preset preset "${PRESET_S:-150}" 1 ;;
    batched) preset batched "${BATCHED_S:-300}" "$BATCHES" ;;
    draft-kv) step draft-kv "${DRAFT_KV_S:-120}" "$PY" benchmarks/bench_draft_kv.py $DRAFT_KV_ARGS $RECORD ;;
  esac
done
cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"
