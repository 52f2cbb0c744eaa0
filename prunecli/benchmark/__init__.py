"""Benchmarks (``benchmark=``): latency of the pruned model, measured honestly.

Warm-up runs first, the device is synchronised around every timed call, and the report is
the median and spread of many repeats.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from prunecli.registry import Registry

# A benchmark takes (LoadedModel, benchmark config) and returns flat metrics.
BENCHMARKS: Registry[Callable[[Any, Any], dict]] = Registry("benchmark")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float], prefix: str, tokens: int) -> dict:
    """Median, p90, min, std of ``times`` (seconds -> ms) and tokens/s at the median."""
    ordered = sorted(times)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        f"{prefix}_ms": median * 1e3,
        f"{prefix}_p90_ms": p90 * 1e3,
        f"{prefix}_min_ms": ordered[0] * 1e3,
        f"{prefix}_std_ms": (statistics.stdev(ordered) if len(ordered) > 1 else 0.0) * 1e3,
        f"{prefix}_tokens_per_s": tokens / median,
        f"{prefix}_repeats": len(ordered),
    }


@BENCHMARKS.register("none")
def no_benchmark(loaded: Any, cfg: Any) -> dict:
    return {}


@BENCHMARKS.register("quick")
@torch.no_grad()
def quick(loaded: Any, cfg: Any) -> dict:
    """Prefill latency: one forward pass over ``batch_size x seqlen`` random tokens.

    An image model (``loaded.input_shape``) gets ``batch_size`` random images instead; its
    ``prefill_tokens_per_s`` counts images per second.
    """
    args, kwargs = loaded.example_input(cfg.batch_size, cfg.seqlen)
    count = args[0].shape[0] if args else kwargs["input_ids"].numel()
    times = time_call(lambda: loaded.model(*args, **kwargs), loaded.device, cfg.warmup, cfg.repeats)
    return summarize(times, "prefill", count)
