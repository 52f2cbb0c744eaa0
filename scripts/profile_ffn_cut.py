"""Where a SmolLM2 prefill spends its time, dense vs with half of every FFN removed (torch profiler).

    python scripts/profile_ffn_cut.py [--keep 768] [--tokens 512] [--forwards 9]

Prints each op x input shape's median self-CPU ms per forward for both models, and the FFN's
share (gate/up/down matmuls, SiLU, product): the part the cut shrinks, against the part it cannot
(attention, norms, rotary, residual, lm_head). The FFN keeps its first ``--keep`` neurons: timing
depends on the shapes only. Used for the accounting in experiments/structured/README.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from prunecli.models.packaged import smollm2_folder
import prunecli.methods  # noqa: F401  (the method registry first: the remover is imported through it)
from prunecli.structured.remove import slice_layer, sync_config


def cut_ffn(model: nn.Module, keep: int) -> nn.Module:
    """Keep the first ``keep`` neurons of every FFN: gate/up rows and down columns (the remover's own slicing)."""
    for layer in model.model.layers:
        mlp, kept = layer.mlp, torch.arange(keep)
        mlp.gate_proj = slice_layer(mlp.gate_proj, kept, torch.arange(mlp.gate_proj.in_features))
        mlp.up_proj = slice_layer(mlp.up_proj, kept, torch.arange(mlp.up_proj.in_features))
        mlp.down_proj = slice_layer(mlp.down_proj, torch.arange(mlp.down_proj.out_features), kept)
    sync_config(model)
    return model


def one_forward_ms(model: nn.Module, ids: torch.Tensor) -> dict[tuple[str, str], float]:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model(input_ids=ids, use_cache=False)
    return {(e.key, str(e.input_shapes)): e.self_cpu_time_total / 1000 for e in prof.key_averages(group_by_input_shape=True)}


def median_profiles(models: dict[str, nn.Module], ids: torch.Tensor, forwards: int) -> dict[str, dict[tuple[str, str], float]]:
    """Per model, each op x shape's median self-CPU ms over ``forwards`` single-forward profiles,
    the models alternating forward by forward (a slow spell of a shared machine hits both)."""
    for model in models.values():
        model(input_ids=ids, use_cache=False)
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(forwards):
        for name, model in models.items():
            runs[name].append(one_forward_ms(model, ids))
    return {name: {key: statistics.median(run.get(key, 0.0) for run in profiles) for key in set().union(*profiles)}
            for name, profiles in runs.items()}


def is_ffn(key: tuple[str, str], width: int) -> bool:
    """gate/up (out = width), down (in = width), SiLU and the product on the (1, tokens, width) activations."""
    return f", {width}]" in key[1] or f"[{width}, " in key[1] or f"{width}]]" in key[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=int, default=768, help="FFN neurons kept per layer (SmolLM2 has 1536)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--forwards", type=int, default=9, help="profiled forwards per model (medians)")
    args = parser.parse_args()
    dense = AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32).eval()
    width = dense.config.intermediate_size
    pruned = cut_ffn(copy.deepcopy(dense), args.keep)
    dense = copy.deepcopy(dense)  # both freshly allocated alike
    ids = torch.randint(0, dense.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        profiles = median_profiles({"dense": dense, "cut": pruned}, ids, args.forwards)
    d, p = profiles["dense"], profiles["cut"]
    ffn_d = sum(v for k, v in d.items() if is_ffn(k, width))
    ffn_p = sum(v for k, v in p.items() if is_ffn(k, args.keep))
    total_d, total_p = sum(d.values()), sum(p.values())
    print(f"dense {total_d:.0f} ms (FFN {ffn_d:.0f}), FFN-cut {total_p:.0f} ms (FFN {ffn_p:.0f}); FFN shrinks {ffn_d / ffn_p:.2f}x; "
          f"an exact halving would give {total_d / (total_d - ffn_d / 2):.3f}x overall, measured {total_d / total_p:.3f}x")
    for key in sorted(set(d) | set(p), key=lambda k: -(d.get(k, 0) + p.get(k, 0)))[:16]:
        print(f"  {d.get(key, 0):8.1f} {p.get(key, 0):8.1f}  {key[0][:44]:44s} {key[1][:70]}")


if __name__ == "__main__":
    main()
