"""``prune report PATH...``: stack every run's ``results.csv`` below the paths into one table.

Completed runs are sorted by model / method / sparsity; failed runs are listed with their
reason, never dropped. Writes ``report.csv`` (all columns) and ``report.md`` (the shown ones).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunecli import console
from prunecli.errors import PruneError
from prunecli.outputs import write_atomic

DEFAULT_COLUMNS = ["model", "method", "pattern", "sparsity_target", "sparsity_actual", "ppl", "ppl_dense", "prefill_ms", "prune_s", "eval_s"]
SORT_KEYS = ["model", "method", "pattern", "sparsity_target"]


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.csv`` at or below the given paths (run dirs, sweep dirs, output roots)."""
    found = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise PruneError(f"report path {raw!r} does not exist")
        found += [path] if path.name == "results.csv" else sorted(path.rglob("results.csv"))
    return found


def load_results(paths: list[str]) -> pd.DataFrame:
    files = find_results(paths)
    if not files:
        raise PruneError(f"no run results (results.csv) found below {', '.join(paths)}")
    frame = pd.concat([pd.read_csv(file) for file in files], ignore_index=True)
    return frame.sort_values([key for key in SORT_KEYS if key in frame], kind="stable", ignore_index=True)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant digits)."""
    cells = [[console.format_value(value) if pd.notna(value) else "" for value in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def main(paths: list[str], columns: list[str] | None = None, output: str | None = None) -> pd.DataFrame:
    frame = load_results(paths)
    columns = columns or [column for column in DEFAULT_COLUMNS if column in frame]
    unknown = [column for column in columns if column not in frame]
    if unknown:
        raise PruneError(f"unknown column(s) {', '.join(unknown)} (available: {', '.join(frame.columns)})")
    completed = frame[frame["status"] == "completed"]
    failed = frame[frame["status"] != "completed"]
    console.console.print(console.table(f"{len(completed)} completed run(s)", completed[columns].to_dict("records"), columns))
    if len(failed):
        failed_columns = [c for c in ["model", "method", "sparsity_target", "error", "run_dir"] if c in frame]
        console.console.print(console.table(f"{len(failed)} failed run(s)", failed[failed_columns].to_dict("records"), failed_columns))
    first = Path(paths[0]).expanduser()
    target = Path(output).expanduser() if output else (first if first.is_dir() else first.parent)
    write_atomic(target / "report.csv", frame.to_csv(index=False))
    write_atomic(target / "report.md", markdown(frame[columns]))
    console.console.print(f"wrote {target / 'report.csv'} and {target / 'report.md'}")
    return frame
