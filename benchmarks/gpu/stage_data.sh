#!/usr/bin/env bash
# Copies the MT-bench question file into .gpu/data/ (ignored by git) so a GPU call can carry it:
# the GPU machine has no network and ../shared does not travel. Run from the repo root.
set -euo pipefail
src=${1:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/data/mt_bench
cp "$src/mt_bench/question.jsonl" .gpu/data/mt_bench/question.jsonl
echo "staged $(wc -l < .gpu/data/mt_bench/question.jsonl) MT-bench questions in .gpu/data"
