"""The process-level helpers of prunecli.environment."""

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunecli.environment import _libc, prefault_for_writing

# In a fresh interpreter (the heap of this one is shaped by every test before): minor page faults while
# 4 blocks of 25 MB are allocated, touched and freed, 3 rounds after a first one -- 100 MB freed at once
# is more than glibc's 64 MiB trim threshold -- outside and inside reuse_freed_memory(); and the resident
# set at the end of the block and after it.
MEASURE = """
import json, os, resource, torch
from prunecli.environment import reuse_freed_memory

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def faults():
    def one_round():
        blocks = [torch.ones(25 << 18) for _ in range(4)]
        del blocks
    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        one_round()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults()
with reuse_freed_memory() as took:
    inside = faults()
    kept_mb = resident_mb()
print(json.dumps({"outside": outside, "took": took, "inside": inside, "kept_mb": kept_mb, "after_mb": resident_mb()}))
"""


@pytest.mark.skipif(_libc() is None or not hasattr(_libc(), "mallopt"), reason="glibc's mallopt is needed (not this C library)")
def test_freed_memory_is_reused_inside_and_released_after():
    result = subprocess.run([sys.executable, "-c", MEASURE], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = json.loads(result.stdout.strip().splitlines()[-1])
    pages = 3 * 4 * (25 << 20) // resource.getpagesize()  # what the three rounds touch
    assert faults["took"]
    # the freed pages stay resident for reuse inside, and are handed back at the end (the 100 MB of a round)
    assert faults["kept_mb"] - faults["after_mb"] > 50
    # fewer page faults inside: how many glibc takes as it is (one to all three of the rounds' pages, with
    # the heap's layout) and inside (none, or one round's as the heap first grows) varies from run to run
    assert faults["inside"] <= faults["outside"] and faults["outside"] >= pages // 4


def copy_on_write_map(path: Path, values: int) -> torch.Tensor:
    """A tensor over a private (copy-on-write) memory map of a file of ``values`` float32s 0, 1, 2, ..., as
    safetensors loads a checkpoint; read once, as the statistics pass reads the weights."""
    if not path.exists():
        np.arange(values, dtype=np.float32).tofile(path)
    tensor = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c", shape=(values,)))
    tensor.sum()
    return tensor


def write_faults(tensor: torch.Tensor) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor.mul_(2)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_prefaulted_weights_are_written_without_a_fault_a_page(tmp_path):
    """Written as they are, a mapped file's 1,024 pages fault once each; prefaulted, (next to) none do; the values
    are written either way, and the file never changes."""
    path, pages = tmp_path / "weights.bin", 1024
    values = pages * resource.getpagesize() // 4
    assert write_faults(copy_on_write_map(path, values)) >= pages
    tensor = copy_on_write_map(path, values)
    if not prefault_for_writing([tensor]):
        pytest.skip("madvise(MADV_POPULATE_WRITE) refused: Linux 5.14+ only")
    assert write_faults(tensor) < 16
    assert torch.equal(tensor, 2 * torch.arange(values, dtype=torch.float32))
    assert torch.equal(torch.from_numpy(np.fromfile(path, dtype=np.float32)), torch.arange(values, dtype=torch.float32))
