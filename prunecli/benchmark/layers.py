"""``benchmark=layers``: when does a sparse kernel beat the dense one on this machine?

For each distinct weight shape among the run's pruned Linear layers, and for a decode shape
(1 token) and a prefill shape (``batch_size x seqlen`` tokens), a random weight is magnitude-
pruned to each sparsity of ``benchmark.sparsities`` (plus the model's own sparsity of that
shape), and ``F.linear`` on the dense weight is timed against the same weight in each sparse
layout of ``benchmark.kernels`` multiplied as the ``csr`` / ``bsr`` backends do
(:func:`~prunecli.benchmark.backends.sparse_linear`; interleaved, median of ``repeats``). ``layers_bench.csv`` has
one row per shape x phase x sparsity; the *break-even sparsity* of a kernel is where its speedup
crosses 1, interpolated linearly in ``log(speedup)`` between the two sparsities around the
crossing (``layers_break_even.csv``; empty when the kernel never wins in the sweep).
Arithmetic intensity of the dense matmul, ``2 t o i / (4 (o i + t i + t o))`` FLOP/byte (fp32),
says how memory-bound the shape is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.benchmark import BENCHMARKS, BenchmarkContext
from prunecli.benchmark.backends import sparse_linear
from prunecli.benchmark.timing import interleaved, paired_speedup, summarize, timed
from prunecli.methods.masks import layerwise_mask
from prunecli.outputs import write_csv

LAYOUTS = {
    "csr": lambda weight, block: weight.to_sparse_csr(),
    "bsr": lambda weight, block: weight.to_sparse_bsr((block, block)),
}


def linear_shapes(layers: dict[str, nn.Module]) -> dict[tuple[int, int], dict]:
    """``{(out, in): {"layers": count, "sparsity": mean zero fraction}}`` of the plain Linear layers."""
    shapes: dict[tuple[int, int], dict] = {}
    for module in layers.values():
        if type(module) is not nn.Linear:
            continue
        entry = shapes.setdefault(tuple(module.weight.shape), {"layers": 0, "zeros": 0, "numel": 0})
        entry["layers"] += 1
        entry["zeros"] += module.weight.numel() - int(torch.count_nonzero(module.weight))
        entry["numel"] += module.weight.numel()
    return {shape: {"layers": e["layers"], "sparsity": e["zeros"] / e["numel"]} for shape, e in shapes.items()}


def pruned_weight(shape: tuple[int, int], sparsity: float, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(shape, generator=generator)
    return weight.masked_fill(layerwise_mask(weight.abs(), sparsity), 0.0)


def break_even(points: list[tuple[float, float]]) -> float | None:
    """Sparsity where the speedup first reaches 1 (log-linear interpolation); None if it never does."""
    for index, (sparsity, speedup) in enumerate(points):
        if speedup >= 1:
            if index == 0:
                return sparsity
            (s0, v0), (s1, v1) = points[index - 1], (sparsity, speedup)
            return s0 + (s1 - s0) * (-math.log(v0)) / (math.log(v1) - math.log(v0))
    return None


def intensity(tokens: int, out_features: int, in_features: int) -> float:
    return 2 * tokens * out_features * in_features / (4 * (out_features * in_features + tokens * in_features + tokens * out_features))


@BENCHMARKS.register("layers")
@torch.inference_mode()
def benchmark_layers(ctx: BenchmarkContext) -> dict:
    options = ctx.settings
    device = ctx.loaded.device
    kernels = list(options.kernels)
    block = int(options.get("bsr_block", 16))
    generator = torch.Generator().manual_seed(0)
    rows, crossings = [], []
    for (out_features, in_features), info in linear_shapes(ctx.layers).items():
        grid = sorted({*map(float, options.sparsities), round(info["sparsity"], 4)})
        usable = [k for k in kernels if k != "bsr" or (out_features % block == 0 and in_features % block == 0)]
        for phase, tokens in (("decode", 1), ("prefill", options.batch_size * options.seqlen)):
            x = torch.randn(tokens, in_features, generator=generator).to(device)
            curve: dict[str, list[tuple[float, float]]] = {k: [] for k in usable}
            for sparsity in grid:
                weight = pruned_weight((out_features, in_features), sparsity, generator).to(device)
                formats = {"dense": weight, **{k: LAYOUTS[k](weight, block) for k in usable}}
                calls = {name: (lambda w=w, fn=(F.linear if name == "dense" else sparse_linear): timed(lambda: fn(x, w), device))
                         for name, w in formats.items()}
                times = interleaved(calls, options.warmup, options.repeats)
                row = {"shape": f"{out_features}x{in_features}", "layers": info["layers"], "phase": phase, "tokens": tokens,
                       "sparsity": sparsity, "model_sparsity": sparsity == round(info["sparsity"], 4),
                       "intensity_dense": intensity(tokens, out_features, in_features),
                       "dense_ms": summarize(times["dense"])["median_ms"]}
                for kernel in usable:
                    speedup = paired_speedup(times["dense"], times[kernel])
                    row |= {f"{kernel}_ms": summarize(times[kernel])["median_ms"], f"{kernel}_speedup": speedup}
                    curve[kernel].append((sparsity, speedup))
                rows.append(row)
            crossings += [{"shape": f"{out_features}x{in_features}", "phase": phase, "kernel": kernel, "break_even_sparsity": break_even(points)}
                          for kernel, points in curve.items()]
    columns = ["shape", "layers", "phase", "tokens", "sparsity", "model_sparsity", "intensity_dense", "dense_ms"]
    columns += [f"{kernel}_{suffix}" for kernel in kernels for suffix in ("ms", "speedup")]
    write_csv(ctx.run_dir / "layers_bench.csv", rows, columns)
    write_csv(ctx.run_dir / "layers_break_even.csv", crossings, ["shape", "phase", "kernel", "break_even_sparsity"])
    return {"break_even": {f"{c['kernel']}/{c['phase']}/{c['shape']}": c["break_even_sparsity"] for c in crossings}}
