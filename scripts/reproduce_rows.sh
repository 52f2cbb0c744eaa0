#!/bin/bash
# Four experiment rows (two one-shot, two structured), their perplexities printed as exact floats:
# a refactor must leave every one bit-identical. Usage: scripts/reproduce_rows.sh OUT_DIR
# (about 7 minutes on 2 CPU cores; run it before and after a change and diff OUT_DIR/ppl.txt).
set -euo pipefail
OUT=${1:?usage: scripts/reproduce_rows.sh OUT_DIR}
mkdir -p "$OUT"
prune run +experiment=oneshot_llm method=magnitude sparsity=0.5 hydra.run.dir="$OUT/magnitude_50" > "$OUT/magnitude_50.log" 2>&1
prune run +experiment=oneshot_llm method=wanda pattern=2:4 sparsity=0.5 hydra.run.dir="$OUT/wanda_2_4" > "$OUT/wanda_2_4.log" 2>&1
prune run +experiment=structured benchmark=none method=ffn sparsity=0.5 method.criterion=fluctuation \
    method.bias_compensation=true hydra.run.dir="$OUT/ffn_50_flap" > "$OUT/ffn_50_flap.log" 2>&1
prune run +experiment=structured benchmark=none method=heads sparsity=0.333 method.criterion=activation \
    method.gqa=kv_groups hydra.run.dir="$OUT/heads_kv_activation" > "$OUT/heads_kv_activation.log" 2>&1
for run in magnitude_50 wanda_2_4 ffn_50_flap heads_kv_activation; do
    python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], repr(m['ppl']), m['params_total'])" \
        "$OUT/$run/metrics.json" "$run"
done | tee "$OUT/ppl.txt"
