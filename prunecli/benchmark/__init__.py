"""Benchmarks (``benchmark=``): what pruning buys in latency, memory, disk and FLOPs, measured honestly.

* ``none``: nothing;
* ``quick``: prefill latency of the pruned model on dense kernels (a smoke figure for sweeps);
* ``backends``: the pruned model on every execution backend (:mod:`backends`), interleaved with
  the unpruned model, prefill and decode, memory, disk, FLOPs (:mod:`model_bench`);
* ``layers``: a micro-benchmark of each Linear shape dense vs sparse over a sparsity sweep, with
  the CSR break-even sparsity (:mod:`layers`).

A benchmark takes a :class:`BenchmarkContext` and returns flat metrics for ``metrics.json``; its
tables (``latency.csv``, ``layers_bench.csv``) go into the run directory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.registry import Registry

PHASES = ("prefill", "decode")
# torch warns on every CSR / BSR conversion that sparse support is "in beta state": said once in the docs instead.
warnings.filterwarnings("ignore", message=r"Sparse (CSR|BSR) tensor support is in beta state")


@dataclass
class BenchmarkContext:
    loaded: Any  # LoadedModel (pruned)
    settings: Any  # the ``benchmark`` config node
    run_dir: Path
    layers: dict[str, nn.Module]  # the run's pruned layers (after a structured method: the new ones)
    unpruned: nn.Module | None = None  # a copy taken before pruning (``benchmark.unpruned: true``)


BENCHMARKS: Registry[Callable[[BenchmarkContext], dict]] = Registry("benchmark")


@BENCHMARKS.register("none")
def no_benchmark(ctx: BenchmarkContext) -> dict:
    return {}


def keeps_unpruned_copy(settings: Any) -> bool:
    """Whether the pipeline must copy the model before pruning (for speedups against it)."""
    return bool(settings.get("unpruned", False))


def check_settings(settings: Any) -> None:
    """Refuse unknown names and impossible counts in the ``benchmark`` config (before loading)."""
    from prunecli.benchmark.backends import BACKENDS
    from prunecli.benchmark.layers import KERNELS
    from prunecli.benchmark.sizes import ENCODERS

    BENCHMARKS.get(settings.name)
    for name in settings.get("backends") or []:
        BACKENDS.get(name)
    for phase in settings.get("phases") or []:
        if phase not in PHASES:
            raise PruneError(f"unknown benchmark phase {phase!r} (choose from: {', '.join(PHASES)})")
    for kernel in settings.get("kernels") or []:
        if kernel not in KERNELS:
            raise PruneError(f"unknown benchmark kernel {kernel!r} (choose from: {', '.join(KERNELS)})")
    for fmt in settings.get("disk_formats") or []:
        if fmt != "dense":
            ENCODERS.get(fmt)
    minimum = {"batch_size": 1, "seqlen": 1, "repeats": 1, "warmup": 0, "decode_prompt": 1, "decode_tokens": 1}
    for key, least in minimum.items():
        value = settings.get(key)
        if value is not None and (not isinstance(value, int) or value < least):
            raise PruneError(f"benchmark.{key} must be an integer >= {least} (got {value!r})")
    for sparsity in settings.get("sparsities") or []:
        if not 0 <= sparsity < 1:
            raise PruneError(f"benchmark.sparsities must lie in [0, 1) (got {sparsity!r})")


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(loaded: Any, settings: Any) -> None:
    """Refuse benchmark shapes the model cannot take or the machine cannot hold, naming the setting."""
    if settings.name == "none" or loaded.tokenizer is None:
        return
    lengths = {"seqlen": settings.get("seqlen", 0), "decode_prompt + decode_tokens": settings.get("decode_prompt", 0) + settings.get("decode_tokens", 0)}
    for key, length in lengths.items():
        if length > loaded.max_length:
            raise PruneError(f"benchmark.{key} = {length} is longer than the context of {loaded.name} ({loaded.max_length} tokens): lower it")
    if loaded.device.type != "cpu":
        return  # CUDA: an out-of-memory error is turned into a message naming the settings
    vocab = loaded.model.get_input_embeddings().num_embeddings
    logits = settings.batch_size * settings.get("seqlen", 1) * vocab * torch.finfo(loaded.dtype).bits // 8
    available = available_memory_bytes()
    if available is not None and 3 * logits > available:  # logits, their float copy and the comparison's
        raise PruneError(f"benchmark.batch_size x benchmark.seqlen = {settings.batch_size} x {settings.seqlen} needs ~{3 * logits / 2**30:.1f} GiB "
                         f"for logits alone, {available / 2**30:.1f} GiB is available: lower benchmark.batch_size or benchmark.seqlen")


from prunecli.benchmark import layers, model_bench  # noqa: E402,F401  (register the benchmarks)
