#!/usr/bin/env bash
# The sparsity paradox experiment in one command: the SmolLM2 sweep (dense, 50% unstructured on
# dense / CSR / BSR kernels, 2:4, 50% FFN removed) and the VGG11 sweep (dense, 50% unstructured,
# 50% filters removed), then one report with the latency table and bar chart.
#   scripts/sparsity_paradox.sh [ROOT] [extra overrides...]   (ROOT default: outputs/sweeps/sparsity_paradox/<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-outputs/sweeps/sparsity_paradox/$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
prune=${PRUNE:-.venv/bin/prune}
status=0
"$prune" run -m +experiment=sparsity_paradox "hydra.sweep.dir=$root/smollm2" "$@" || status=1
"$prune" run -m +experiment=sparsity_paradox_vgg11 "hydra.sweep.dir=$root/vgg11" "$@" || status=1
"$prune" report "$root" --plot \
  --columns model,method,pattern,sparsity_target,params_total,ppl,prefill_ms,prefill_speedup,decode_ms,decode_speedup,flops_ratio,disk_mb_dense,disk_mb_bitmask
exit $status
