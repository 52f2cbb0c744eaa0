"""The process-level helpers of prunecli.environment."""

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from prunecli.environment import _libc

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
