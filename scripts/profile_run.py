"""Where a whole ``prune run`` spends its time (#19): the run under ``torch.profiler``, ops by self CPU time.

Runs ``prune run`` with the given overrides in this process under the CPU profiler (which slows it by a
few percent) and prints the ``--top`` ops by self CPU time, with their call counts, to standard output::

    python scripts/profile_run.py method=wanda sparsity=0.5 data.nsamples=64 eval=none benchmark=none
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prunecli.cli import main as prune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20, help="how many ops to list")
    parser.add_argument("overrides", nargs="*", help="prune run's overrides")
    args = parser.parse_args()
    sys.argv = ["prune", "run", *args.overrides]
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        try:
            prune()
        except SystemExit as exit_:
            if exit_.code:
                raise
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
