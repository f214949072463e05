#!/usr/bin/env bash
# One call: prompts -> distil -> train -> evaluate a draft head for SmolLM2-135M-Instruct, within a
# time budget, on the GPU machine of ../shared/gpu/README.md (no network; the model arrives as a
# GGUF through ../shared/gpu/prepare.sh + assemble.sh). Only the head and small JSON summaries are
# written under $OUT; the work folder (prompts, shards, checkpoints) stays in $WORK.
#
# Before the transfer, on the machine with the data (ignored by git, never committed):
#     bash ../shared/gpu/prepare.sh && mkdir -p .gpu/data && cp -r ../shared/data/{mt_bench,gsm8k,train} .gpu/data/
# On the GPU machine, in the last transfer (see ../shared/gpu/README.md):
#     bash .gpu/whl/assemble.sh 2 && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 \
#       && DATA_DIR=.gpu/data bash benchmarks/gpu/train_head.sh
#
# Settings (environment; defaults for one H200 and an 8-minute call):
#   MODEL=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf   DEVICE=cuda   DATA_DIR=.gpu/data   OUT=$OUT (else ./gpu-head-out)
#   BUDGET_S=450         whole pipeline, seconds; split 15% prompts, 45% distil, 28% train, the rest evaluation
#   SOURCES="--mix 6000" prompts-stage sources (e.g. "--source shared:gsm8k_train:500 --source magpie:writing:200")
#   BATCH=256 MAX_NEW_TOKENS=256 EPOCHS=4 TTT_STEPS=3 TOKENS_PER_BATCH=16384 DRAFT_VOCAB=16384
#   QUESTIONS=16 (MT-bench first turns for tau)   ENGINE_DTYPE=float32 (features and evaluation)   GEN_DTYPE=auto
#   COMPUTE_DTYPE=bfloat16 (the training steps' matmuls, under autocast; weights and losses stay float32)
#   PYTHON=python3   WORK=/tmp/eagle2-train-work   THREADS= (torch CPU threads, for the CPU rehearsal)
# Exit status: 0 when a head was written and evaluated (stages cut short by the budget are recorded
# in pipeline.json, and resumed by running the script again with the same WORK).
set -uo pipefail

MODEL=${MODEL:-/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf}
DEVICE=${DEVICE:-cuda}
DATA_DIR=${DATA_DIR:-.gpu/data}
OUT=${OUT:-./gpu-head-out}
WORK=${WORK:-/tmp/eagle2-train-work}
BUDGET_S=${BUDGET_S:-450}
SOURCES=${SOURCES:---mix 6000}
BATCH=${BATCH:-256}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-256}
EPOCHS=${EPOCHS:-4}
TTT_STEPS=${TTT_STEPS:-3}
TOKENS_PER_BATCH=${TOKENS_PER_BATCH:-16384}
DRAFT_VOCAB=${DRAFT_VOCAB:-16384}
QUESTIONS=${QUESTIONS:-16}
ENGINE_DTYPE=${ENGINE_DTYPE:-float32}
GEN_DTYPE=${GEN_DTYPE:-auto}
COMPUTE_DTYPE=${COMPUTE_DTYPE:-bfloat16}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-}

mkdir -p "$OUT" "$WORK"
model_args=(--model "$MODEL" --device "$DEVICE")
[ -n "$THREADS" ] && model_args+=(--threads "$THREADS")
started=$(date +%s)
share() { echo $(( BUDGET_S * $1 / 100 )); }
remaining() { echo $(( BUDGET_S - ($(date +%s) - started) )); }
status_prompts=skipped status_distill=skipped status_train=skipped status_evaluate=skipped

run_stage() {  # name seconds command...: runs with a hard timeout, records ok | timeout | failed(rc)
  local name=$1 seconds=$2; shift 2
  local t0=$(date +%s)
  if [ "$seconds" -lt 5 ]; then eval "status_$name=no-time"; return 1; fi
  timeout --signal=INT --kill-after=20 "$seconds" "$@"
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  case $rc in
    0) eval "status_$name=ok" ;;
    124|130) eval "status_$name=timeout" ;;
    *) eval "status_$name=failed-$rc" ;;
  esac
  echo "== $name: rc $rc in ${took}s" >&2
  eval "seconds_$name=$took"
  return $rc
}

# shellcheck disable=SC2086
run_stage prompts "$(share 15)" "$PYTHON" -m harness -q train prompts --work "$WORK" $SOURCES --data-dir "$DATA_DIR" \
  --drop-overlapping --magpie-batch-size "$BATCH" "${model_args[@]}" --dtype "$ENGINE_DTYPE"
if [ ! -f "$WORK/prompts.jsonl" ]; then echo "no prompts were written; stopping" >&2; exit 1; fi

# Killed by the budget, the distillation keeps every finished shard; training uses what there is.
run_stage distill "$(share 45)" "$PYTHON" -m harness -q train distill --work "$WORK" --batch-size "$BATCH" --shard-size "$BATCH" \
  --max-new-tokens "$MAX_NEW_TOKENS" --max-prompt-tokens 1024 --sampled-fraction 0.4 --dtype "$GEN_DTYPE" \
  "${model_args[@]}" --engine-dtype "$ENGINE_DTYPE"
if ! ls "$WORK"/distill/shard-*.safetensors >/dev/null 2>&1; then echo "no distillation shard was finished; stopping" >&2; exit 1; fi

train_s=$(share 28)
run_stage train $(( train_s + 60 )) "$PYTHON" -m harness -q train train --work "$WORK" --out "$OUT/head" --epochs "$EPOCHS" \
  --ttt-steps "$TTT_STEPS" --tokens-per-batch "$TOKENS_PER_BATCH" --draft-vocab-size "$DRAFT_VOCAB" --max-seconds "$train_s" --compute-dtype "$COMPUTE_DTYPE" \
  --eval-every 100000 --checkpoint-every 200 --max-heldout-pairs 20000 "${model_args[@]}" --dtype "$ENGINE_DTYPE"
if [ ! -f "$OUT/head/config.json" ]; then echo "no head was written; stopping" >&2; exit 1; fi

run_stage evaluate "$(( $(remaining) - 5 ))" "$PYTHON" -m harness -q train evaluate --head "$OUT/head" --questions "$QUESTIONS" \
  --methods vanilla eagle1 eagle2 --temperatures 0 --max-new-tokens 128 --data-dir "$DATA_DIR" --out "$OUT/eval.json" --run-dir "$OUT/eval-run" \
  "${model_args[@]}" --dtype "$ENGINE_DTYPE"

for f in prompts.summary.json distill/distill.summary.json; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
"$PYTHON" - "$OUT/pipeline.json" <<PY
import json, sys, platform
import torch, transformers
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
json.dump({
    "stages": {"prompts": "$status_prompts", "distill": "$status_distill", "train": "$status_train", "evaluate": "$status_evaluate"},
    "seconds": {"prompts": ${seconds_prompts:-0}, "distill": ${seconds_distill:-0}, "train": ${seconds_train:-0}, "evaluate": ${seconds_evaluate:-0}},
    "budget_s": $BUDGET_S, "sources": "$SOURCES", "batch": $BATCH, "max_new_tokens": $MAX_NEW_TOKENS, "epochs": $EPOCHS,
    "ttt_steps": $TTT_STEPS, "engine_dtype": "$ENGINE_DTYPE", "generation_dtype": "$GEN_DTYPE", "compute_dtype": "$COMPUTE_DTYPE", "device": "$DEVICE",
    "gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__, "machine": platform.machine(),
}, open(sys.argv[1], "w"), indent=2)
PY
echo "head, eval.json and pipeline.json in $OUT" >&2
[ "$status_evaluate" = ok ]
