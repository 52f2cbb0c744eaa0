"""``prune report PATH...``: stack every run's ``results.csv`` below the paths into one table.

One row per ``run_id`` (a completed row wins, then the newest run directory); ``skipped`` rows are
dropped; ``--where KEY=VALUE`` keeps the matching runs. Completed runs are sorted by model / method
/ sparsity; failed and interrupted runs are listed with their reason, never dropped; a
``results.csv`` that cannot be read is named with the reason and the rest is reported. Written next to the first path
(or into ``--output``): ``report.csv`` (all columns), ``report.md|tex`` (the shown ones),
``pivot.csv|md|tex`` with ``--pivot``, ``latency.csv`` (every run's ``latency.csv`` stacked) when
runs have one, and ``plots/`` with ``--plot``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from prunecli import console
from prunecli.errors import PruneError
from prunecli.figures import SOURCE, require_matplotlib, stage_of, varying_settings, write_plots
from prunecli.outputs import write_atomic
from prunecli.records import REPORT_COLUMNS

OPTIONAL_STAGES = ("update",)  # report columns left out when every run says none

SORT_KEYS = ["model", "method", "pattern", "sparsity_target"]
REQUIRED_COLUMNS = ["run_id", "status", "model", "method"]
SUFFIXES = {"csv": "csv", "md": "md", "latex": "tex"}
PIVOT_KEYS = {"rows": "rows", "index": "rows", "cols": "cols", "columns": "cols", "values": "values"}
LATENCY_IDS = ["run_id", "model", "method", "pattern", "sparsity_target"]
LATEX_SPECIAL = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
}


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.csv`` at or below the given paths (run dirs, sweep dirs, output roots)."""
    found = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise PruneError(f"report path {raw!r} does not exist")
        found += [path] if path.name == "results.csv" else sorted(path.rglob("results.csv"))
    return found


def read_results(file: Path) -> pd.DataFrame:
    """One ``results.csv``; a file that is not one (empty, binary, cut short, another header)
    raises ``ValueError`` with the reason."""
    try:
        frame = pd.read_csv(file, dtype={"run_id": "str"})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"not a prunecli results.csv: no {', '.join(missing)} column (header cut short?)")
    return frame


def load_results(paths: list[str]) -> pd.DataFrame:
    """All rows, sorted, each tagged (column ``SOURCE``) with the folder its file is in. A file
    that cannot be read is listed with its path and reason and left out; the rest is reported."""
    files = find_results(paths)
    if not files:
        raise PruneError(f"no run results (results.csv) found below {', '.join(paths)}")
    frames, unreadable = [], []
    for file in files:
        try:
            frames.append(read_results(file).assign(**{SOURCE: str(file.parent)}))
        except ValueError as err:
            unreadable.append((file, str(err)))
    for file, reason in unreadable:
        console.console.print(f"skipped unreadable {file}: {reason}", markup=False, highlight=False, soft_wrap=True)
    if not frames:
        raise PruneError(f"none of the {len(files)} results.csv file(s) below {', '.join(paths)} could be read (listed above)")
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values([key for key in SORT_KEYS if key in frame], kind="stable", ignore_index=True)


def data_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of the results, without the internal source column."""
    return [column for column in frame.columns if column != SOURCE]


def default_columns(frame: pd.DataFrame) -> list[str]:
    """:data:`REPORT_COLUMNS` the runs have (a stage column such as ``update`` only where some run used
    one), then every setting the runs differ in (eval data and budget, calibration, benchmark)."""
    shown = [column for column in REPORT_COLUMNS
             if column in frame and not (column in OPTIONAL_STAGES and stage_of(frame, column).eq("none").all())]
    return shown + [column for column in varying_settings(frame) if column not in shown]


def check_columns(frame: pd.DataFrame, names: list[str], option: str) -> None:
    """Every name must be a column of the results; else one line listing the available ones."""
    unknown = [name for name in names if name not in data_columns(frame)]
    if unknown:
        raise PruneError(f"{option}: unknown column(s) {', '.join(unknown)} (available: {', '.join(data_columns(frame))})")


def finished_at(folder: str) -> float:
    """When a run directory was finished: the mtime of its metrics.json (written last)."""
    marker = Path(folder) / "metrics.json"
    return (marker if marker.exists() else Path(folder) / "results.csv").stat().st_mtime


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per ``run_id``: ``skipped`` rows go, then a completed row wins, then the newest one."""
    runs = frame[frame["status"] != "skipped"]
    ranked = runs.assign(completed=runs["status"] == "completed", finished=runs[SOURCE].map(finished_at))
    keep = ranked.sort_values(["completed", "finished"], ascending=False, kind="stable").drop_duplicates("run_id").index
    skipped, duplicates = len(frame) - len(runs), len(runs) - len(keep)
    if skipped or duplicates:
        console.console.print(f"dropped {skipped} skipped and {duplicates} duplicate row(s) (same run_id)")
    return frame.loc[keep.sort_values()].reset_index(drop=True)


def parse_where(conditions: list[str], frame: pd.DataFrame) -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings -> (column, value) pairs; every column must exist."""
    pairs = []
    for condition in conditions:
        key, sep, value = condition.partition("=")
        if not sep or not key.strip():
            raise PruneError(f"--where expects KEY=VALUE (got {condition!r})")
        pairs.append((key.strip(), value.strip()))
    check_columns(frame, [key for key, _ in pairs], "--where")
    return pairs


def as_number(text: str) -> float | None:
    """The text as a number, or None when it is not one."""
    try:
        return float(text)
    except ValueError:
        return None


def matches(column: pd.Series, value: str) -> pd.Series:
    """Cells equal to ``value`` as written in the CSV (empty for a missing one), or as numbers."""
    equal = column.map(lambda cell: "" if pd.isna(cell) else str(cell)) == value
    number = as_number(value)
    return equal if number is None else equal | (pd.to_numeric(column, errors="coerce") == number)


def select(frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The rows matching every (column, value) pair."""
    mask = pd.Series(True, index=frame.index)
    for key, value in pairs:
        mask &= matches(frame[key], value)
    return frame[mask].reset_index(drop=True)


def parse_pivot(spec: str, frame: pd.DataFrame) -> dict[str, list[str]]:
    """``rows=a+b,cols=c,values=v`` (also ``index=`` / ``columns=``) -> the column lists."""
    parts: dict[str, list[str]] = {"cols": []}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in PIVOT_KEYS or not value.strip():
            raise PruneError(f"--pivot expects rows=COL[+COL],cols=COL[+COL],values=COL (got {item!r})")
        parts[PIVOT_KEYS[key.strip()]] = [name.strip() for name in value.split("+")]
    if "rows" not in parts or len(parts.get("values", [])) != 1:
        raise PruneError(f"--pivot needs rows=COL and one values=COL (got {spec!r})")
    check_columns(frame, [name for names in parts.values() for name in names], "--pivot")
    if not pd.api.types.is_numeric_dtype(frame[parts["values"][0]]):
        raise PruneError(f"--pivot: values column {parts['values'][0]!r} is not numeric")
    return parts


def check_comparable(frame: pd.DataFrame, keys: list[str]) -> None:
    """Refuse to average, in one cell of ``keys``, runs measured on different settings (naming them)."""
    for column in varying_settings(frame):
        if column in keys:
            continue
        mixed = frame.assign(**{column: frame[column].astype(object).fillna("")}).groupby(keys)[column].nunique()
        if (mixed > 1).any():
            values = sorted(map(str, frame[column].astype(object).fillna("").unique()))
            raise PruneError(f"--pivot would average runs with different {column} ({', '.join(values)}) in one cell: "
                             f"add it to rows= or cols=, or keep one with --where {column}=...")


def pivot_table(frame: pd.DataFrame, parts: dict[str, list[str]]) -> pd.DataFrame | None:
    """Mean of the values column per rows x cols cell over the completed runs, with flat column names."""
    completed = frame[frame["status"] == "completed"]
    if completed.empty:
        return None
    options = dict(index=parts["rows"], columns=parts["cols"] or None, values=parts["values"][0])
    check_comparable(completed, parts["rows"] + parts["cols"])
    shared = int((completed.pivot_table(**options, aggfunc="count") > 1).to_numpy().sum())
    if shared:
        console.console.print(f"note: {shared} pivot cell(s) hold several runs; their mean is shown")
    table = completed.pivot_table(**options, aggfunc="mean")
    table.columns = [" / ".join(map(str, label)) if isinstance(label, tuple) else str(label) for label in table.columns]
    return table.reset_index()


def cells(frame: pd.DataFrame) -> list[list[str]]:
    """Every value as text (numbers to 4 significant digits, missing ones empty)."""
    return [[console.format_value(value) if pd.notna(value) else "" for value in row] for row in frame.itertuples(index=False)]


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (numbers to 4 significant digits)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells(frame)]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex(frame: pd.DataFrame) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``); numeric columns right-aligned."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(dtype) else "l" for dtype in frame.dtypes)
    rows = [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in [list(map(str, frame.columns)), *cells(frame)]]
    return "\n".join([rf"\begin{{tabular}}{{{align}}}", r"\toprule", rows[0], r"\midrule", *rows[1:], r"\bottomrule", r"\end{tabular}"]) + "\n"


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The table as CSV, Markdown or LaTeX text."""
    writers = {"csv": lambda table: table.to_csv(index=False), "md": markdown, "latex": latex}
    return writers[fmt](frame)


def show_runs(frame: pd.DataFrame, columns: list[str]) -> None:
    """Completed runs as one table, the others (with their error) as a second one."""
    completed = frame[frame["status"] == "completed"]
    console.console.print(console.table(f"{len(completed)} completed run(s)", completed[columns].to_dict("records"), columns))
    other_columns = [c for c in ["status", "model", "method", "sparsity_target", "error", "run_dir"] if c in frame]
    for status in sorted(set(frame["status"].dropna()) - {"completed"}):  # failed, interrupted, ...
        runs = frame[frame["status"] == status]
        console.console.print(console.table(f"{len(runs)} {status} run(s)", runs[other_columns].to_dict("records"), other_columns))


def write_reports(frame: pd.DataFrame, columns: list[str], target: Path, fmt: str) -> None:
    """``report.csv`` (every column) and, unless the format is CSV, ``report.md|tex`` (the shown ones)."""
    written = [target / "report.csv"]
    write_atomic(written[0], frame[data_columns(frame)].to_csv(index=False))
    if fmt != "csv":
        path = target / f"report.{SUFFIXES[fmt]}"
        write_atomic(path, render(frame[columns], fmt))
        written.append(path)
    console.console.print(f"wrote {' and '.join(map(str, written))}")


def write_pivot(frame: pd.DataFrame, parts: dict[str, list[str]], target: Path, fmt: str) -> None:
    """Print the pivot table and write it as ``pivot.csv|md|tex``."""
    table = pivot_table(frame, parts)
    if table is None:
        console.console.print("no completed runs to pivot")
        return
    title = f"mean {parts['values'][0]} by {'+'.join(parts['rows'])}" + (f" x {'+'.join(parts['cols'])}" if parts["cols"] else "")
    shown = table.astype(object).where(table.notna(), "")
    console.console.print(console.table(title, shown.to_dict("records"), list(table.columns)))
    path = target / f"pivot.{SUFFIXES[fmt]}"
    write_atomic(path, render(table, fmt))
    console.console.print(f"wrote {path}")


def merge_latency(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Every listed run's ``latency.csv`` stacked, each row led by its run's identifying columns."""
    parts = []
    for row in frame.to_dict("records"):
        path = Path(row[SOURCE]) / "latency.csv"
        if path.exists():
            latency = pd.read_csv(path)
            ids = pd.DataFrame({key: row[key] for key in LATENCY_IDS}, index=latency.index)
            parts.append(ids.join(latency.drop(columns=LATENCY_IDS, errors="ignore")))
    return pd.concat(parts, ignore_index=True) if parts else None


def write_latency(latency: pd.DataFrame, target: Path) -> None:
    """Write the stacked latency rows (as ``report_latency.csv`` in a run directory, whose own file stays)."""
    path = target / ("report_latency.csv" if (target / "results.csv").exists() else "latency.csv")
    write_atomic(path, latency.to_csv(index=False))
    console.console.print(f"stacked the latency of {latency['run_id'].nunique()} run(s) into {path}")


def output_folder(paths: list[str], output: str | None) -> Path:
    """Where the report files go: ``output``, else the first path (its folder, for a file)."""
    first = Path(paths[0]).expanduser()
    return Path(output).expanduser() if output else (first if first.is_dir() else first.parent)


def main(
    paths: list[str],
    columns: list[str] | None = None,
    output: str | None = None,
    *,
    where: list[str] | None = None,
    pivot: str | None = None,
    fmt: str = "md",
    plot: bool = False,
) -> pd.DataFrame:
    """Print the runs below ``paths`` and write the report files; return the listed runs."""
    if fmt not in SUFFIXES:
        raise PruneError(f"unknown report format {fmt!r} (choose from: {', '.join(SUFFIXES)})")
    if plot:
        require_matplotlib()
    frame = load_results(paths)
    columns = columns or default_columns(frame)
    check_columns(frame, columns, "--columns")
    pairs = parse_where(where or [], frame)
    parts = parse_pivot(pivot, frame) if pivot else None
    frame = select(deduplicate(frame), pairs)
    show_runs(frame, columns)
    target = output_folder(paths, output)
    write_reports(frame, columns, target, fmt)
    latency = merge_latency(frame)
    if latency is not None:
        write_latency(latency, target)
    if parts:
        write_pivot(frame, parts, target, fmt)
    if plot:
        write_plots(frame, latency, target / "plots")
    return frame[data_columns(frame)]
