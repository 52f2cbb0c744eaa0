#!/usr/bin/env bash
# #17 on a GPU machine: a random-weight Llama-2-7B-shape fp16 model held in CPU memory, each block
# moved to cuda while it is calibrated and pruned (model.offload=cpu model.device=cuda), Wanda and
# SparseGPT 50% with 128 x 2048 calibration windows. Writes each run's prune time and peak GPU memory
# (metrics.json: prune_s, stage_peak_mb.prune.cuda) to $OUT (default outputs/gpu_offload)/summary.jsonl.
# Without CUDA it says so and exits 0 (CI and CPU machines skip it).
#   bash scripts/gpu_offload.sh            # needs ~14 GB RAM for the model, ~30 GB disk
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-$(command -v python3)}; fi
OUT=${OUT:-outputs/gpu_offload}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "skipped: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "torch not installed for $PY"))"
  exit 0
fi
mkdir -p "$OUT"
MODEL=${MODEL:-$HOME/.cache/prunecli/scaling/llama-2-7b-fp16}
SRC=$("$PY" -c "from prunecli.models.packaged import smollm2_folder; print(smollm2_folder())")
[ -f "$MODEL/config.json" ] || "$PY" scripts/random_weights.py "$SRC" "$MODEL" --shape llama-2-7b --dtype fp16
"$PY" -c "import torch; print(torch.cuda.get_device_name(0))" > "$OUT/device.txt"
for method in wanda sparsegpt; do
  "$PY" -c "from prunecli.cli import main; main()" run model=hf model.name_or_path="$MODEL" model.dtype=fp16 model.device=cuda \
    model.offload=cpu method=$method sparsity=0.5 data.nsamples=128 data.seqlen=2048 data.max_eval_tokens=8192 \
    benchmark=none hydra.run.dir="$OUT/$method" > "$OUT/$method.log" 2>&1
  "$PY" - "$OUT/$method/metrics.json" >> "$OUT/summary.jsonl" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"method": m["method"], "params": m["params_total"], "prune_s": m["prune_s"],
                  "prune_peak_cuda_mb": m["stage_peak_mb"]["prune"].get("cuda"), "run_peak_rss_mb": max(p["rss"] for p in m["stage_peak_mb"].values()),
                  "block_s": m["calibration"][m["method"]]["block_seconds"], "ppl": m["ppl"], "device": m["environment"]["gpu"]}))
PYEOF
done
cat "$OUT/summary.jsonl"
