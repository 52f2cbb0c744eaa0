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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.options import Options, parse
from prunecli.registry import Registry

PHASES = ("prefill", "decode")
# torch warns on every CSR / BSR conversion that sparse support is "in beta state": said once in the docs instead.
warnings.filterwarnings("ignore", message=r"Sparse (CSR|BSR) tensor support is in beta state")


@dataclass(frozen=True)
class BenchmarkOptions(Options):
    """A benchmark's options (``none``: nothing to set)."""


@dataclass(frozen=True)
class TimingOptions(BenchmarkOptions):
    """What every timed benchmark sets: the input shape and the rounds (:mod:`timing`)."""

    batch_size: int = 1
    seqlen: int = 128  # prefill tokens per sequence
    warmup: int = 3  # untimed rounds
    repeats: int = 10  # timed rounds; every candidate runs once per round
    bsr_block: int = 16

    def check(self, prefix: str) -> None:
        for key, least in self.minimum().items():
            value = getattr(self, key)
            if value < least:
                raise PruneError(f"{prefix}.{key} must be an integer >= {least} (got {value!r})")

    def minimum(self) -> dict[str, int]:
        return {"batch_size": 1, "seqlen": 1, "repeats": 1, "warmup": 0, "bsr_block": 1}


@dataclass(frozen=True)
class ModelBenchOptions(TimingOptions):
    """``quick`` and ``backends`` (:mod:`model_bench`)."""

    backends: list[str] = field(default_factory=lambda: ["dense"])  # BACKENDS entries
    phases: list[str] = field(default_factory=lambda: ["prefill"])  # prefill | decode
    unpruned: bool = False  # keep a copy of the model before pruning and time it in the same rounds
    compile: bool = False  # torch.compile every candidate
    decode_prompt: int = 64  # tokens prefilled (untimed) before decoding
    decode_tokens: int = 16  # single-token steps on the KV cache, timed
    sparse_min_sparsity: float = 0.1  # csr / bsr convert Linear layers with at least this fraction of zeros
    flops: bool = True
    disk_formats: list[str] = field(default_factory=list)  # dense | ENCODERS entries

    def check(self, prefix: str) -> None:
        from prunecli.benchmark.backends import BACKENDS
        from prunecli.benchmark.sizes import ENCODERS

        super().check(prefix)
        for name in self.backends:
            BACKENDS.get(name)
        for phase in self.phases:
            if phase not in PHASES:
                raise PruneError(f"unknown benchmark phase {phase!r} (choose from: {', '.join(PHASES)})")
        for fmt in self.disk_formats:
            if fmt != "dense":
                ENCODERS.get(fmt)

    def minimum(self) -> dict[str, int]:
        return super().minimum() | {"decode_prompt": 1, "decode_tokens": 1}


@dataclass(frozen=True)
class LayerBenchOptions(TimingOptions):
    """``layers`` (:mod:`layers`)."""

    kernels: list[str] = field(default_factory=lambda: ["csr", "bsr"])  # KERNELS entries
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9, 0.95])  # the model's own sparsity is added

    def check(self, prefix: str) -> None:
        from prunecli.benchmark.layers import KERNELS

        super().check(prefix)
        for kernel in self.kernels:
            if kernel not in KERNELS:
                raise PruneError(f"unknown benchmark kernel {kernel!r} (choose from: {', '.join(KERNELS)})")
        for sparsity in self.sparsities:
            if not 0 <= sparsity < 1:
                raise PruneError(f"{prefix}.sparsities must lie in [0, 1) (got {sparsity!r})")


@dataclass(frozen=True)
class Benchmark:
    """``run(ctx) -> flat metrics``, and the typed options of its ``benchmark`` config node."""

    name: str
    run: Callable[["BenchmarkContext"], dict]
    options: type[BenchmarkOptions] = BenchmarkOptions


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register(benchmark: Benchmark) -> Benchmark:
    return BENCHMARKS.add(benchmark.name, benchmark)


def check_settings(settings: Any) -> BenchmarkOptions:
    """The ``benchmark`` config node as its benchmark's typed options (unknown names, keys and
    impossible counts refused, before loading). ``benchmark=none`` times nothing, so the timing
    settings an experiment preset gives the other benchmarks are left aside rather than refused."""
    if isinstance(settings, BenchmarkOptions):
        return settings
    name = settings.get("name", "none")
    if name == "none":
        return BenchmarkOptions(name="none")
    return parse(BENCHMARKS.get(name).options, settings, "benchmark")


@dataclass
class BenchmarkContext:
    loaded: Any  # LoadedModel (pruned)
    settings: Any  # the benchmark's typed options (a config node given here is parsed)
    run_dir: Path
    layers: dict[str, nn.Module]  # the run's pruned layers (after a structured method: the new ones)
    unpruned: nn.Module | None = None  # a copy taken before pruning (``benchmark.unpruned: true``)

    def __post_init__(self) -> None:
        self.settings = check_settings(self.settings)


register(Benchmark("none", lambda ctx: {}))


def keeps_unpruned_copy(settings: BenchmarkOptions) -> bool:
    """Whether the pipeline must copy the model before pruning (for speedups against it)."""
    return isinstance(settings, ModelBenchOptions) and settings.unpruned


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


def check_fits(loaded: Any, settings: BenchmarkOptions) -> None:
    """Refuse benchmark shapes the model cannot take or the machine cannot hold, naming the setting."""
    settings = check_settings(settings)
    if not isinstance(settings, TimingOptions) or loaded.tokenizer is None:
        return
    lengths = {"seqlen": settings.seqlen}
    if isinstance(settings, ModelBenchOptions) and "decode" in settings.phases:
        lengths["decode_prompt + decode_tokens"] = settings.decode_prompt + settings.decode_tokens
    for key, length in lengths.items():
        if length > loaded.max_length:
            raise PruneError(f"benchmark.{key} = {length} is longer than the context of {loaded.name} ({loaded.max_length} tokens): lower it")
    if loaded.device.type != "cpu":
        return  # CUDA: an out-of-memory error is turned into a message naming the settings
    vocab = loaded.model.get_input_embeddings().num_embeddings
    logits = settings.batch_size * settings.seqlen * vocab * torch.finfo(loaded.dtype).bits // 8
    available = available_memory_bytes()
    if available is not None and 3 * logits > available:  # logits, their float copy and the comparison's
        raise PruneError(f"benchmark.batch_size x benchmark.seqlen = {settings.batch_size} x {settings.seqlen} needs ~{3 * logits / 2**30:.1f} GiB "
                         f"for logits alone, {available / 2**30:.1f} GiB is available: lower benchmark.batch_size or benchmark.seqlen")


from prunecli.benchmark import layers, model_bench  # noqa: E402,F401  (register the benchmarks)
