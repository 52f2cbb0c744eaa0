"""``benchmark=layers``: when does a sparse kernel beat the dense one on this machine?

For each distinct weight shape among the run's pruned Linear layers, and for a decode shape
(1 token) and a prefill shape (``batch_size x seqlen`` tokens), a random weight is magnitude-
pruned to each sparsity of ``benchmark.sparsities`` (plus the model's own sparsity of that
shape), and ``F.linear`` on the dense weight is timed against the same weight in each sparse
layout of ``benchmark.kernels`` multiplied as the ``csr`` / ``bsr`` backends do
(:func:`~prunecli.benchmark.backends.sparse_linear`; interleaved, median of ``repeats``), in the
model's dtype on its device. ``semi_structured`` (CUDA 2:4 kernels) has one point, sparsity 0.5,
on a weight pruned to the 2:4 pattern. A kernel that cannot run here is left out with its reason
(``layers_break_even.csv``'s ``status``). ``layers_bench.csv`` has one row per shape x phase x
sparsity; the *break-even sparsity* of a kernel is where its speedup crosses 1, interpolated
linearly in ``log(speedup)`` between the two sparsities around the crossing
(``layers_break_even.csv``; empty when the kernel never wins in the sweep).
Arithmetic intensity of the dense matmul, ``2 t o i / (bytes (o i + t i + t o))`` FLOP/byte,
says how memory-bound the shape is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.benchmark import Benchmark, BenchmarkContext, LayerBenchOptions, register
from prunecli.benchmark.backends import (
    BackendSettings, BackendSkipped, backend_settings, cpu_sparse_problem, semi_structured_problem, sparse_linear, to_semi_structured,
)
from prunecli.benchmark.timing import interleaved, paired_speedup, summarize, timed
from prunecli.methods.masks import layerwise_mask, nm_mask
from prunecli.outputs import write_csv

SEMI_STRUCTURED_SPARSITY = 0.5  # 2:4


def csr_weight(weight: torch.Tensor, generator: torch.Generator, block: int) -> torch.Tensor:
    return weight.to_sparse_csr()


def bsr_weight(weight: torch.Tensor, generator: torch.Generator, block: int) -> torch.Tensor:
    return weight.to_sparse_bsr((block, block))


def semi_structured_weight(weight: torch.Tensor, generator: torch.Generator, block: int) -> torch.Tensor:
    """A random weight of the same shape pruned to 2:4 (the kernel's only pattern), as CUTLASS / cuSPARSELt store it."""
    dense = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype)
    return to_semi_structured(dense.masked_fill(nm_mask(dense.abs().float(), 2, 4), 0))


# kernel -> (sparse weight from the pruned dense one, the multiply, why it cannot run here or None)
KERNELS = {
    "csr": (csr_weight, sparse_linear, lambda settings: cpu_sparse_problem("csr", settings)),
    "bsr": (bsr_weight, sparse_linear, lambda settings: cpu_sparse_problem("bsr", settings)),
    "semi_structured": (semi_structured_weight, F.linear, semi_structured_problem),
}


def runs_at(kernel: str, sparsity: float, shape: tuple[int, int], block: int) -> bool:
    if kernel == "semi_structured":
        return sparsity == SEMI_STRUCTURED_SPARSITY
    return kernel != "bsr" or (shape[0] % block == 0 and shape[1] % block == 0)


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


def pruned_weight(shape: tuple[int, int], sparsity: float, generator: torch.Generator, settings: BackendSettings) -> torch.Tensor:
    weight = torch.randn(shape, generator=generator)
    return weight.masked_fill(layerwise_mask(weight.abs(), sparsity), 0.0).to(settings.device, settings.dtype)


def break_even(points: list[tuple[float, float]]) -> float | None:
    """Sparsity where the speedup first reaches 1 (log-linear interpolation); None if it never does."""
    for index, (sparsity, speedup) in enumerate(points):
        if speedup >= 1:
            if index == 0:
                return sparsity
            (s0, v0), (s1, v1) = points[index - 1], (sparsity, speedup)
            return s0 + (s1 - s0) * (-math.log(v0)) / (math.log(v1) - math.log(v0))
    return None


def intensity(tokens: int, out_features: int, in_features: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP per byte moved of the dense matmul: ``2 t o i / (bytes (o i + t i + t o))``."""
    size = torch.finfo(dtype).bits // 8
    return 2 * tokens * out_features * in_features / (size * (out_features * in_features + tokens * in_features + tokens * out_features))


def usable_kernels(kernels: list[str], settings: BackendSettings) -> tuple[list[str], dict[str, str]]:
    """The kernels that can run here, and ``{kernel: "skipped: <reason>"}`` for the others
    (names were checked by :class:`prunecli.benchmark.LayerBenchOptions`)."""
    problems = {k: KERNELS[k][2](settings) for k in kernels}
    return [k for k in kernels if not problems[k]], {k: f"skipped: {p}" for k, p in problems.items() if p}


@torch.inference_mode()
def benchmark_layers(ctx: BenchmarkContext) -> dict:
    options = ctx.settings
    settings = backend_settings(ctx.loaded, options)
    device, block = settings.device, settings.bsr_block
    kernels, skipped = usable_kernels(list(options.kernels), settings)
    generator = torch.Generator().manual_seed(0)
    rows, crossings = [], []
    for (out_features, in_features), info in linear_shapes(ctx.layers).items():
        shape = (out_features, in_features)
        grid = sorted({*map(float, options.sparsities), round(info["sparsity"], 4)} | ({SEMI_STRUCTURED_SPARSITY} if "semi_structured" in kernels else set()))
        failed: dict[str, str] = {}
        for phase, tokens in (("decode", 1), ("prefill", options.batch_size * options.seqlen)):
            x = torch.randn(tokens, in_features, generator=generator).to(device, settings.dtype)
            curve: dict[str, list[tuple[float, float]]] = {k: [] for k in kernels if any(runs_at(k, s, shape, block) for s in grid)}
            for sparsity in grid:
                weight = pruned_weight(shape, sparsity, generator, settings)
                formats, multiply = {"dense": weight}, {"dense": F.linear}
                for kernel in (k for k in curve if k not in failed and runs_at(k, sparsity, shape, block)):
                    try:
                        formats[kernel], multiply[kernel] = KERNELS[kernel][0](weight, generator, block), KERNELS[kernel][1]
                    except BackendSkipped as reason:  # e.g. a shape the 2:4 kernels refuse
                        failed[kernel] = f"skipped: {reason}"
                calls = {name: (lambda w=w, fn=multiply[name]: timed(lambda: fn(x, w), device)) for name, w in formats.items()}
                times = interleaved(calls, options.warmup, options.repeats, desc=f"benchmark layers: {len(calls)} candidate(s)")
                row = {"shape": f"{out_features}x{in_features}", "layers": info["layers"], "phase": phase, "tokens": tokens,
                       "sparsity": sparsity, "model_sparsity": sparsity == round(info["sparsity"], 4),
                       "intensity_dense": intensity(tokens, out_features, in_features, settings.dtype),
                       "dense_ms": summarize(times["dense"])["median_ms"]}
                for kernel in formats.keys() - {"dense"}:
                    speedup = paired_speedup(times["dense"], times[kernel])
                    row |= {f"{kernel}_ms": summarize(times[kernel])["median_ms"], f"{kernel}_speedup": speedup}
                    curve[kernel].append((sparsity, speedup))
                rows.append(row)
            crossings += [{"shape": f"{out_features}x{in_features}", "phase": phase, "kernel": kernel, "status": failed.get(kernel, "ok"),
                           "break_even_sparsity": break_even(points)} for kernel, points in curve.items()]
    crossings += [{"kernel": kernel, "status": status} for kernel, status in skipped.items()]
    columns = ["shape", "layers", "phase", "tokens", "sparsity", "model_sparsity", "intensity_dense", "dense_ms"]
    columns += [f"{kernel}_{suffix}" for kernel in options.kernels for suffix in ("ms", "speedup")]
    write_csv(ctx.run_dir / "layers_bench.csv", rows, columns)
    write_csv(ctx.run_dir / "layers_break_even.csv", crossings, ["shape", "phase", "kernel", "status", "break_even_sparsity"])
    return {"break_even": {f"{c['kernel']}/{c['phase']}/{c['shape']}": c["break_even_sparsity"] for c in crossings if "shape" in c}}


register(Benchmark("layers", benchmark_layers, LayerBenchOptions))
