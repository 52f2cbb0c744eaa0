"""Rich console output: run header, result tables, one-line errors."""

from __future__ import annotations

import math
import sys
from typing import NoReturn

from rich.console import Console
from rich.table import Table

# Piped or redirected output is never wrapped (a path or a table cell split over lines cannot be
# copied or parsed); on a terminal, rich fits tables to its width.
PIPED_WIDTH = 10_000
console = Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
errors = Console(stderr=True)


def format_value(value) -> str:
    """A figure as shown: floats to 4 significant digits, a missing one (NaN) empty as in report.md."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, rows: list[tuple[str, str]] | list[dict], columns: list[str] | None = None) -> Table:
    """Key/value rows (list of pairs) or records (list of dicts with ``columns``)."""
    result = Table(title=title, title_justify="left")
    if columns is None:
        result.add_column("key", style="bold")
        result.add_column("value", justify="right")
        for key, value in rows:
            result.add_row(key, value)
        return result
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(format_value(row.get(column, "")) for column in columns))
    return result


def error(message: str) -> None:
    """One line on stderr, no markup interpretation."""
    print(f"prune: error: {message}", file=sys.stderr, flush=True)


def exit_with(err: Exception, code: int = 2) -> NoReturn:
    """One line and ``SystemExit`` -- for code that Hydra calls (callbacks, launchers), which turns
    an ordinary exception into a warning or a traceback; a ``BaseException`` passes through it."""
    error(str(err))
    raise SystemExit(code) from None
