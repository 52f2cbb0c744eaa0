"""Compare the masks of two saved pruned models (#19): which weights one zeroes and the other keeps.

Each argument is a run directory of ``prune run ... save_model=true`` (its ``model/`` safetensors and
``metrics.json``). Prints the differing mask entries per block and in all over the 2-D weights inside the
blocks, the largest weight difference, and both runs' ``ppl`` and ``prune_s``::

    prune run method=wanda sparsity=0.5 data.max_eval_tokens=32768 eval.baseline=false benchmark=none save_model=true hydra.run.dir=outputs/masks_a
    (the same on another commit, hydra.run.dir=outputs/masks_b)
    python scripts/compare_masks.py outputs/masks_a outputs/masks_b
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

from safetensors.torch import load_file


def saved_weights(run_dir: Path) -> dict:
    weights = {}
    for path in sorted((run_dir / "model").glob("*.safetensors")):
        weights.update(load_file(path))
    if not weights:
        raise SystemExit(f"{run_dir}: no saved model (run with save_model=true)")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    a, b = saved_weights(args.a), saved_weights(args.b)
    per_block, total, largest = collections.Counter(), 0, 0.0
    for name, weight in a.items():
        block = re.search(r"layers\.(\d+)\.", name)
        if weight.dim() != 2 or block is None:
            continue
        per_block[int(block.group(1))] += int(((weight == 0) != (b[name] == 0)).sum())
        total += weight.numel()
        largest = max(largest, float((weight - b[name]).abs().max()))
    print("differing mask entries per block:", dict(sorted(per_block.items())))
    print(f"in all: {sum(per_block.values())} of {total} ({sum(per_block.values()) / total:.3%}); largest |dW| {largest:.4g}")
    for run_dir in (args.a, args.b):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"{run_dir}: ppl {metrics.get('ppl')}  prune_s {metrics.get('prune_s')}")


if __name__ == "__main__":
    main()
