#!/usr/bin/env bash
# The issue-9 GPU check in one call (about 6-8 minutes on one H200), on the machine described in
# ../shared/gpu/README.md: no network, torch 2.11 + transformers 5.17 preinstalled, the embedded model
# arriving in parts. From the repo root, here:
#     bash ../shared/gpu/prepare.sh 2 && bash benchmarks/gpu/stage_data.sh
# then call 1 carries .gpu/part1 and runs `mkdir -p /tmp/m && cp .gpu/part1/* /tmp/m/`; call 2 carries
# .gpu/part2 .gpu/whl .gpu/data and runs
#     bash .gpu/whl/assemble.sh 2 && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && bash benchmarks/gpu/run.sh
# It writes under $OUT (at most 8 files come back): gpu-results.tar.gz (every run folder and report),
# and the main reports and the engine benchmark table as plain files.
#
# What it runs (all on suites/gpu-smoke.yaml's MT-bench questions, 128 new tokens):
#   1. bf16, eager engine            vanilla / hf_generate / EAGLE-1 / EAGLE-2, T = 0 and 1 (audited)
#   2. bf16, static + compiled       the same, CUDA graphs (compile: true)
#   3. fp32 greedy lossless check    vanilla / EAGLE-1 / EAGLE-2 at T = 0: outputs must be identical
#   4. the engine benchmark          bf16 eager vs compiled vs fp32, interleaved, with the audit
#   5. a regression baseline         results/baselines/gpu-smoke.json from run 2 (compiled, the GPU default)
# Environment (for a CPU dry run at tiny scale): MODEL (default /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf),
# DEVICE (cuda), HEAD (builtin:smollm2-135m-instruct), DATA (.gpu/data), LIMIT (5), MAX_NEW (128),
# BENCH_PROMPTS (5), COMPILE (true).
set -euo pipefail
OUT=${OUT:?set OUT to the folder that comes back}
MODEL=${MODEL:-/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf}
DEVICE=${DEVICE:-cuda}
HEAD=${HEAD:-builtin:smollm2-135m-instruct}
DATA=${DATA:-.gpu/data}
LIMIT=${LIMIT:-5}
MAX_NEW=${MAX_NEW:-128}
BENCH_PROMPTS=${BENCH_PROMPTS:-5}
COMPILE=${COMPILE:-true}
WORK=$(mktemp -d)
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started )) s] $*"; }

python3 - "$MODEL" "$DEVICE" "$HEAD" "$WORK" "$COMPILE" <<'PY'
import sys, yaml
model, device, head, work, compile_ = sys.argv[1:]
base = yaml.safe_load(open("suites/gpu-smoke.yaml"))
def variant(name, dtype, compiled, temperatures, methods=None):
    suite = dict(base, name=name)
    suite["models"] = [dict(base["models"][0], source=model, device=device, dtype=dtype, head=head, compile=compiled)]
    suite["sampling"] = dict(base.get("sampling", {}), temperatures=temperatures)
    if methods is not None:
        suite["methods"] = methods
    with open(f"{work}/{name}.yaml", "w") as handle:
        yaml.safe_dump(suite, handle, sort_keys=False)
variant("gpu-bf16-eager", "bfloat16", False, [0.0, 1.0])
variant("gpu-bf16-compiled", "bfloat16", compile_ == "true", [0.0, 1.0])
variant("gpu-fp32-lossless", "float32", False, [0.0], [m for m in base["methods"] if (m if isinstance(m, str) else m["name"]) != "hf_generate"])
PY

run_suite() {
  stamp "run $1"
  python3 -m harness run "$WORK/$1.yaml" --data-dir "$DATA" --limit "$LIMIT" --max-new-tokens "$MAX_NEW" --out "$WORK/runs/$1" --no-progress \
    || echo "run $1 exited $? (failures are in its failures.jsonl)"
  python3 -m harness report "$WORK/runs/$1" --out "$WORK/reports/$1" || echo "report $1 exited $?"
}
run_suite gpu-bf16-eager
run_suite gpu-bf16-compiled
run_suite gpu-fp32-lossless

stamp "engine benchmark"
variants="bfloat16:eager,float32:eager"
[ "$COMPILE" = true ] && variants="bfloat16:eager,bfloat16:compiled,float32:eager"
python3 benchmarks/engine.py --model "$MODEL" --head "$HEAD" --device "$DEVICE" --variants "$variants" --data-dir "$DATA" \
  --prompts "$BENCH_PROMPTS" --max-new-tokens "$MAX_NEW" \
  --methods '[["vanilla",{}],["hf_generate",{}],["hf_generate",{"cache":"static","compile":true}],["eagle1",{"tree":"mc_sim_7b_63"}],["eagle2",{"depth":6,"top_k":10,"total_tokens":60}],["eagle2",{"depth":5,"top_k":8,"total_tokens":32}]]' \
  --run-dir "$WORK/runs/engine-bench" --out "$WORK/engine-bench.json" 2>&1 | tee "$WORK/engine-bench.txt" || echo "engine benchmark exited $?"

stamp "baseline"
mkdir -p "$WORK/baselines"
python3 -m harness check "$WORK/runs/gpu-bf16-compiled" --baseline "$WORK/baselines/gpu-smoke.json" --write-baseline || echo "baseline exited $?"

stamp "packing"
tar -czf "$OUT/gpu-results.tar.gz" -C "$WORK" .
for name in gpu-bf16-eager gpu-bf16-compiled gpu-fp32-lossless; do
  [ -f "$WORK/reports/$name/report.md" ] && cp "$WORK/reports/$name/report.md" "$OUT/$name.md"
done
[ -f "$WORK/engine-bench.txt" ] && cp "$WORK/engine-bench.txt" "$OUT/engine-bench.txt"
[ -f "$WORK/baselines/gpu-smoke.json" ] && cp "$WORK/baselines/gpu-smoke.json" "$OUT/gpu-smoke-baseline.json"
stamp "done"
