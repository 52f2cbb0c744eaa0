"""What the run ran on: versions, device names, git revision, peak memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha() -> str | None:
    """Revision of the prunecli source tree, when it is a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def environment(device: torch.device) -> dict:
    import transformers

    from prunecli import __version__

    return {
        "prunecli": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``; elsewhere nothing).

    Tensors under glibc's mmap threshold (which grows to 32 MiB as large blocks are freed) come
    from the heap; onloading block after block leaves it fragmented, and the resident set would
    grow by tens of MB a block although nothing is held. Called when an offloaded part is dropped.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc mallopt() parameters (malloc.h) and the values its dynamic mmap threshold converges to once
# blocks of 32 MiB or more have been freed: threshold 32 MiB, trim threshold twice that, no top pad.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
CONVERGED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_TOP_PAD: 0}
KEPT = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 40, M_TOP_PAD: 256 << 20}


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed heap memory for the next allocation while a loop frees and allocates the same large
    tensors over and over (the layer-wise passes: 10-25 MB activations per batch of windows).

    By default glibc hands the heap's free top back to the system once 64 MiB of it are free, and the
    next batch faults zeroed pages in again (~45,000 minor faults a second in a SparseGPT run on the 2-core
    VM). Inside: no trimming, the heap grown 256 MiB at a time; on exit the values glibc converges to by
    itself are set (:data:`CONVERGED`) and the kept pages are released (:func:`release_freed_memory`).
    Yields whether the settings took (glibc only; elsewhere nothing changes)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        yield False
        return
    took = all([libc.mallopt(parameter, value) == 1 for parameter, value in KEPT.items()])  # every one set, even after a refusal
    try:
        yield took
    finally:
        for parameter, value in CONVERGED.items():
            libc.mallopt(parameter, value)
        release_freed_memory()


MADV_POPULATE_WRITE = 23  # Linux 5.14+ (asm-generic/mman-common.h)


def prefault_for_writing(tensors: Iterable[torch.Tensor]) -> bool:
    """Fault in the pages of the contiguous CPU ``tensors``, writable, one ``madvise(MADV_POPULATE_WRITE)`` each, before
    they are first read and then written in place. Returns whether the kernel did so for every one (Linux 5.14+; elsewhere,
    or where it refuses, nothing changes and writes fault as before).

    A checkpoint loaded from safetensors is a copy-on-write memory map of its file: once a weight has been read, the first
    write to each 4 KiB page of it traps and copies that page alone. On the 2-core VM, reading then half-zeroing a
    SmolLM2-135M block's linear weights (3,456 pages) took 39 ms so, 14 ms with the pages populated first (medians of
    15 blocks each, ``python scripts/block_profile.py --prefault``): ~0.8 s of a layer-wise run, whose methods write
    every target weight. The resident set grows by the private copies either way.
    Pages already private and present are left as they are; the pages a tensor shares with its neighbours at either
    end are made private with it, their contents unchanged."""
    libc = _libc()
    if libc is None or not sys.platform.startswith("linux"):
        return False
    page, populated = resource.getpagesize(), True
    for tensor in tensors:
        if tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.numel():
            start = tensor.data_ptr() // page * page
            stop = -(-(tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page) * page
            populated &= libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), MADV_POPULATE_WRITE) == 0
    return populated


def reset_peak_memory() -> None:
    """Start a new stretch for :func:`peak_memory`: the resident-set high-water mark (Linux
    ``/proc/self/clear_refs``; elsewhere the process peak stays) and CUDA's allocation peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak MiB since the last :func:`reset_peak_memory`: ``rss`` (resident set, Linux ``VmHWM``;
    elsewhere the process peak) and, with CUDA, ``cuda`` (max allocated on the current device)."""
    peaks = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks["rss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if torch.cuda.is_available():
        peaks["cuda"] = torch.cuda.max_memory_allocated() / 2**20
    return {key: round(value, 1) for key, value in peaks.items()}


def peak_memory_mb(device: torch.device, stage_peaks: dict[str, dict]) -> float:
    """The run's peak, from its stages' (:func:`peak_memory`): CUDA max allocated on a CUDA device, else resident set."""
    key = "cuda" if device.type == "cuda" else "rss"
    return max((peaks.get(key, 0.0) for peaks in stage_peaks.values()), default=peak_memory().get(key, 0.0))
