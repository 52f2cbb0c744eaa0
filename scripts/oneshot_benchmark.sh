#!/usr/bin/env bash
# Reproduce experiments/oneshot_llm/README.md: dense, magnitude, Wanda and SparseGPT on the
# packaged SmolLM2 at 50% / 70% unstructured, 2:4 and 4:8, on the reference protocol
# (calibration: 64 news windows of 512 tokens, seed 0; eval: first 64 Wikipedia windows).
# The packaged news_sample / wiki_sample sources are byte-identical to ../shared/protocol's
# calib_news.jsonl / eval_wiki.txt (tests/test_corpora.py checks it).
#   scripts/oneshot_benchmark.sh [OUTPUT_ROOT]      (about 40 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PRUNE=${PRUNE:-.venv/bin/prune}
ROOT=${1:-outputs/oneshot_llm}

"$PRUNE" run +experiment=oneshot_llm method=dense hydra.run.dir="$ROOT/dense"
"$PRUNE" run -m +experiment=oneshot_llm hydra.sweep.dir="$ROOT/unstructured" resume=false
"$PRUNE" run -m +experiment=oneshot_llm_nm hydra.sweep.dir="$ROOT/nm" resume=false
"$PRUNE" report "$ROOT" --columns method,pattern,sparsity_target,sparsity_actual,ppl,prune_s,peak_memory_mb
