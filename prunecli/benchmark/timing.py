"""Timing that can be trusted: warm-up, device synchronisation, interleaved repeats, median and spread.

Every candidate is timed in the same rounds (round r runs candidate A, then B, then C, ...), so a
slow spell of a shared machine hits all of them alike; a speedup is the median over rounds of the
per-round ratio ``t_reference / t_candidate``. On CUDA a call is timed with CUDA events around it
and a synchronisation; on CPU with ``time.perf_counter``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch

from prunecli.environment import release_freed_memory

# A timed call runs once and returns its own duration in seconds (so it can do untimed setup first).
TimedCall = Callable[[], float]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by ``fn()``: CUDA events on a GPU, wall clock on CPU; the device is synchronised."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def interleaved(calls: dict[str, TimedCall], warmup: int, repeats: int, desc: str | None = None) -> dict[str, list[float]]:
    """``repeats`` rounds, each running every call once, after ``warmup`` untimed rounds. Odd rounds
    run the calls in reverse order (A B, B A, ...), so no call always comes first or last in a round.
    With ``desc``, a progress bar over every call (warm-up included) with its time estimate."""
    from tqdm.auto import tqdm

    progress = tqdm(total=(warmup + repeats) * len(calls), desc=desc, unit="call", disable=desc is None, leave=False)
    for _ in range(warmup):
        for call in calls.values():
            call()
            progress.update()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats):
        progress.set_postfix_str(f"round {round_ + 1}/{repeats}")
        for name in (list(calls) if round_ % 2 == 0 else reversed(list(calls))):
            times[name].append(calls[name]())
            progress.update()
    progress.close()
    return times


def summarize(times: list[float], per: int = 1) -> dict:
    """Median, p90, min and std of ``times`` in ms (each divided by ``per``, e.g. tokens decoded)."""
    ordered = sorted(t / per for t in times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": p90 * 1e3,
        "min_ms": ordered[0] * 1e3,
        "std_ms": (statistics.stdev(ordered) if len(ordered) > 1 else 0.0) * 1e3,
        "repeats": len(ordered),
    }


NOISY_SPREAD = 0.25  # (p90 - min) / median above this: the rounds disagree too much for the median to be trusted


def spread(stats: dict) -> float:
    """``(p90 - min) / median`` of :func:`summarize`'s figures: how far the rounds stray from one another."""
    return (stats["p90_ms"] - stats["min_ms"]) / stats["median_ms"] if stats["median_ms"] > 0 else 0.0


def trust(stats: dict) -> str:
    """``ok``, or ``noisy: ...`` naming the spread, for a latency row (:data:`NOISY_SPREAD`)."""
    wide = spread(stats)
    return "ok" if wide <= NOISY_SPREAD else f"noisy: p90-min is {wide:.2f} of the median (> {NOISY_SPREAD}); the machine was busy or the rounds too few"


def paired_speedup(reference: list[float], candidate: list[float]) -> float:
    """Median over rounds of ``reference[r] / candidate[r]`` (both timed in the same round)."""
    return statistics.median(ref / cand for ref, cand in zip(reference, candidate, strict=True))


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device, interval_s: float = 0.001):
    """Yield a dict that gets ``peak_bytes`` when the block ends: the most memory the block used on
    top of what was in use before it (CUDA: ``max_memory_allocated``; CPU: RSS sampled every
    ``interval_s`` after :func:`~prunecli.environment.release_freed_memory`, so that RSS growth
    measures what the block allocates rather than what the allocator had cached).

    Sampling runs a thread, so never wrap a timed call with it."""
    result: dict[str, int] = {}
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
        return
    release_freed_memory()
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["peak_bytes"] = max(peak[0], rss_bytes()) - before
