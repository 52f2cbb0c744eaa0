#!/usr/bin/env bash
# #19 on a GPU: the paired timing series of scripts/paired_timing.py with the model on cuda.
# SmolLM2-135M's shapes with random weights (scripts/random_weights.py: the timings depend on the
# shapes only; perplexities and masks of such a model mean nothing), fp32 as in the CPU protocol,
# the protocol's calibration texts (calib_news.jsonl, byte-identical to news_sample), 64 x 512, seed 0.
# Wanda and SparseGPT 50%: A = 8 windows per forward (the default) against B = 1 (the reference
# schedule), PAIRS pairs each; then A at 64 windows (the whole calibration set in one forward).
# Each series' rows go to $OUT/<method>_<windows>.log as they finish, its CSV to $OUT/<method>_<windows>.csv.
# Without CUDA it says so and exits 0 (CI and CPU machines skip it).
#   bash scripts/gpu_timing.sh
# Environment: SRC (a folder with config.json + tokenizer; default the converted SmolLM2), CALIB (default
# ../shared/protocol/calib_news.jsonl), OUT (default outputs/gpu_timing), PAIRS (default 3), PY.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-$(command -v python3)}; fi
OUT=${OUT:-outputs/gpu_timing}
PAIRS=${PAIRS:-3}
CALIB=${CALIB:-../shared/protocol/calib_news.jsonl}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "skipped: no CUDA device visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "torch not installed for $PY"))"
  exit 0
fi
[ -f "$CALIB" ] || { echo "error: calibration texts $CALIB not found (set CALIB to the protocol's calib_news.jsonl)" >&2; exit 2; }
mkdir -p "$OUT"
SRC=${SRC:-$("$PY" -c "from prunecli.models.packaged import smollm2_folder; print(smollm2_folder())")}
MODEL=${MODEL:-$(mktemp -d)/smollm2-135m-random-fp32}
[ -f "$MODEL/config.json" ] || "$PY" scripts/random_weights.py "$SRC" "$MODEL" --dtype fp32
{ nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv || true
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$OUT/device.txt"
cat "$OUT/device.txt"
series() {  # method, windows per forward
  "$PY" scripts/paired_timing.py --method "$1" --batch "$2" --pairs "$PAIRS" --calibration "$CALIB" --out "$OUT/$1_$2.csv" \
    model=hf model.name_or_path="$MODEL" model.device=cuda 2>&1 | tee "$OUT/$1_$2.log"
}
series wanda 8
series sparsegpt 8
series wanda 64
series sparsegpt 64
