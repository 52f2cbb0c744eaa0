"""The process-level helpers of prunecli.environment."""

import resource

import pytest
import torch

from prunecli.environment import _libc, reuse_freed_memory


def faults_reallocating(tensors: int = 4, megabytes: int = 25, rounds: int = 3) -> int:
    """Minor page faults while ``tensors`` blocks of ``megabytes`` are allocated, touched and freed, ``rounds``
    times after a first round: 100 MB freed at once is more than glibc's default 64 MiB trim threshold."""
    def one_round() -> None:
        blocks = [torch.ones(megabytes << 18) for _ in range(tensors)]  # float32: 2^18 a MB
        del blocks

    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(_libc() is None or not hasattr(_libc(), "mallopt"), reason="glibc's mallopt is needed (not this C library)")
def test_freed_memory_is_reused_inside_and_released_after():
    pages = 3 * 4 * (25 << 20) // resource.getpagesize()  # what the rounds touch
    outside = faults_reallocating()
    with reuse_freed_memory() as took:
        assert took
        inside = faults_reallocating()
    after = faults_reallocating()
    assert outside > pages // 2 and after > pages // 2  # every round faults its pages in again
    assert inside < pages // 20  # the freed pages were kept and reused
