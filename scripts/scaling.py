"""How pruning cost grows with model size (#17): random-weight Llama-shaped models, block-wise offloaded.

For each shape (``scripts/random_weights.py --shape``; fp32, made once under ``--models``) and each
method, one ``prune run`` at a time (nothing else should run: two model jobs on this machine's two
cores halve each other), with ``model.offload=disk`` and a small calibration budget::

    python scripts/scaling.py --shapes smollm2-135m smollm2-360m tinyllama-1.1b llama-3.2-3b --methods wanda sparsegpt

Rows go to ``experiments/scaling/results.csv`` (one per run, with the command that reproduces it):
parameters, prune time (calibration + pruning) and its mean per block, peak RSS of the prune stage and
of the run, the weights' size on disk, and peak RSS / weight size. Then, per method, the exponent
``k`` of ``prune_s ~ params^k`` (least squares on logs) and ``experiments/scaling/scaling.png``.

``--reload`` also saves each pruned model (``save_model=true``: the sharded safetensors folder), loads
it back whole with plain ``from_pretrained`` (``model=hf model.offload=none method=dense``), scores it on
the same windows, and records that perplexity (``reloaded_ppl``) and whether it equals the offloaded
run's to the bit (``reloaded_same``); the saved folder is removed after.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from random_weights import SHAPES  # noqa: E402

OUT = REPO / "experiments" / "scaling"
COLUMNS = ["shape", "method", "params", "weights_gb", "prune_s", "block_s_mean", "prune_peak_rss_gb", "run_peak_rss_gb",
           "peak_rss_over_weights", "ppl", "reloaded_ppl", "reloaded_same", "command"]


def random_model(shape: str, models: Path) -> Path:
    """The fp32 random model of ``shape`` (SmolLM2's tokenizer), written once."""
    folder = models / f"{shape}-fp32"
    if not (folder / "config.json").is_file():
        from prunecli.models.packaged import smollm2_folder

        subprocess.run([sys.executable, str(REPO / "scripts" / "random_weights.py"), str(smollm2_folder()), str(folder),
                        "--shape", shape, "--dtype", "fp32"], check=True)
    return folder


def weights_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def prune(command: list[str], label: str) -> None:
    result = subprocess.run([sys.executable, "-c", "from prunecli.cli import main; main()", *command[1:]], cwd=REPO, text=True,
                            capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{label} failed: {result.stderr.strip().splitlines()[-1:]}")


def run(shape: str, method: str, folder: Path, args: argparse.Namespace) -> dict:
    run_dir = REPO / "outputs" / "scaling" / f"{shape}_{method}"
    budget = [f"data.nsamples={args.nsamples}", f"data.seqlen={args.seqlen}", f"data.max_eval_tokens={args.eval_tokens}"]
    command = ["prune", "run", "model=hf", f"model.name_or_path={folder}", f"method={method}", "sparsity=0.5", "benchmark=none",
               f"model.offload={args.offload}", *budget, "baseline_cache=null",  # every run scores its dense model (its memory counts)
               f"hydra.run.dir={run_dir}"] + (["save_model=true"] if args.reload else [])
    for folder_of_run in (run_dir, run_dir.with_name(run_dir.name + "_reloaded")):  # this script's own earlier rows: measured anew
        shutil.rmtree(folder_of_run, ignore_errors=True)
    prune(command, f"{shape} {method}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    reloaded = {"reloaded_ppl": "", "reloaded_same": ""}
    if args.reload:
        reload_dir = run_dir.with_name(run_dir.name + "_reloaded")
        prune(["prune", "run", "model=hf", f"model.name_or_path={run_dir / 'model'}", "method=dense", "benchmark=none",
               "eval.baseline=false", *budget, f"hydra.run.dir={reload_dir}"], f"{shape} {method} reloaded")
        ppl = json.loads((reload_dir / "metrics.json").read_text())["ppl"]
        reloaded = {"reloaded_ppl": round(ppl, 1), "reloaded_same": ppl == metrics["ppl"]}
        shutil.rmtree(run_dir / "model")
    blocks = metrics["calibration"][method]["block_seconds"]
    size = weights_bytes(folder)
    peak = max(peaks["rss"] for peaks in metrics["stage_peak_mb"].values()) * 2**20
    return {
        "shape": shape, "method": method, "params": metrics["params_total"], "weights_gb": round(size / 1e9, 2),
        "prune_s": round(metrics["prune_s"], 1), "block_s_mean": round(sum(blocks) / len(blocks), 2),
        "prune_peak_rss_gb": round(metrics["stage_peak_mb"]["prune"]["rss"] * 2**20 / 1e9, 2), "run_peak_rss_gb": round(peak / 1e9, 2),
        "peak_rss_over_weights": round(peak / size, 3), "ppl": round(metrics["ppl"], 1), **reloaded, "command": shlex.join(command),
    }


def exponent(rows: list[dict]) -> float:
    """``k`` of ``prune_s ~ params^k``: the least-squares slope of log(prune_s) on log(params)."""
    xs = [math.log(r["params"]) for r in rows]
    ys = [math.log(r["prune_s"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in rows}):
        own = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params"])
        params = [r["params"] / 1e9 for r in own]
        time_axis.loglog(params, [r["prune_s"] for r in own], "o-", label=method)
        memory_axis.plot(params, [r["run_peak_rss_gb"] for r in own], "o-", label=f"{method}: peak RSS")
    sizes = sorted({(r["params"], r["weights_gb"]) for r in rows})
    memory_axis.plot([p / 1e9 for p, _ in sizes], [w for _, w in sizes], "k--", label="weights (fp32)")
    time_axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor log ticks' labels overlap
    time_axis.set(xlabel="parameters (billions)", ylabel="prune time (s)", title="time")
    memory_axis.set(xlabel="parameters (billions)", ylabel="GB", title="memory")
    for axis in (time_axis, memory_axis):
        axis.legend()
        axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["smollm2-135m", "smollm2-360m", "tinyllama-1.1b", "llama-3.2-3b"])
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--offload", default="disk", choices=["none", "cpu", "disk"])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--reload", action="store_true", help="save each pruned model, reload it with from_pretrained, score it again")
    parser.add_argument("--models", type=Path, default=Path.home() / ".cache" / "prunecli" / "scaling")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.csv"
    rows = list(csv.DictReader(results.open())) if results.exists() else []
    for shape in args.shapes:
        folder = random_model(shape, args.models)
        for method in args.methods:
            row = run(shape, method, folder, args)
            print(json.dumps(row))
            rows = [r for r in rows if (r["shape"], r["method"]) != (shape, method)] + [row]
            with results.open("w", newline="") as handle:  # after every run: nothing finished is lost
                writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
    typed = [{**r, "params": int(r["params"]), "prune_s": float(r["prune_s"]), "run_peak_rss_gb": float(r["run_peak_rss_gb"]),
              "weights_gb": float(r["weights_gb"])} for r in rows]
    for method in sorted({r["method"] for r in typed}):
        own = [r for r in typed if r["method"] == method]
        if len(own) > 1:
            print(f"{method}: prune_s ~ params^{exponent(own):.2f} over {len(own)} sizes")
    plot(typed, OUT / "scaling.png")


if __name__ == "__main__":
    main()
