"""Rich console output: run header, result tables, one-line errors."""

from __future__ import annotations

import math
import re
import sys
from typing import NoReturn

from rich.console import Console
from rich.table import Table

# Piped or redirected output is never wrapped (a path or a table cell split over lines cannot be
# copied or parsed). On a terminal, lines of text are not broken either (the terminal folds them
# for the eye; a copied path stays whole), and a table too wide for it truncates cells with an
# ellipsis rather than splitting them over lines.
PIPED_WIDTH = 10_000


class Output(Console):
    """A console whose lines of text are never broken (tables are still fitted to its width)."""

    def print(self, *objects, **options) -> None:
        if all(isinstance(item, str) for item in objects):
            options.setdefault("soft_wrap", True)
        super().print(*objects, **options)


def make_console(terminal: bool, width: int | None = None) -> Console:
    """The console for standard output: a terminal's (its width, or ``width``) or a pipe's (never wrapped)."""
    return Output(width=width if terminal else PIPED_WIDTH)


console = make_console(sys.stdout.isatty())
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


def table(title: str, rows: list[tuple[str, str]] | list[dict], columns: list[str] | None = None, width: int | None = None) -> Table:
    """Key/value rows (list of pairs) or records (list of dicts with ``columns``), fitted to ``width``
    (the console's): a figure is never cut; text cells and headers are cut with an ellipsis, down to
    :data:`TEXT_MIN` characters; columns that still do not fit are left out, and the title says so."""
    result = Table(title=title, title_justify="left")
    if columns is None:
        result.add_column("key", style="bold", no_wrap=True)
        result.add_column("value", justify="right", overflow="ellipsis", no_wrap=True)
        for key, value in rows:
            result.add_row(key, value)
        return result
    cells = [[format_value(row.get(column, "")) for column in columns] for row in rows]
    widths = column_widths(columns, cells, width or console.width)
    if len(widths) < len(columns):
        result.title = f"{title} ({len(widths)} of {len(columns)} columns fit the terminal; the report files have all)"
    for column, chosen in zip(columns, widths):
        result.add_column(column, width=chosen, overflow="ellipsis", no_wrap=True)
    for row in cells:
        result.add_row(*row[:len(widths)])
    return result


TEXT_MIN = 12  # a text cell is cut to no fewer characters (with its ellipsis)
FIGURE = re.compile(r"^-?[\d,]*\.?\d*(e[+-]?\d+)?$")


def least_width(column: str, cells: list[str]) -> int:
    """The narrowest a column may be: its widest figure (numbers are never cut), or for text
    ``TEXT_MIN`` characters (less if header and cells are shorter)."""
    widest = max([len(cell) for cell in cells] + [1])
    if all(FIGURE.match(cell) for cell in cells):
        return widest
    return min(max(widest, len(column)), TEXT_MIN)


def column_widths(columns: list[str], cells: list[list[str]], width: int) -> list[int]:
    """Widths of the leading columns that fit in ``width`` (borders and padding counted; at least
    one column): each as wide as its header and cells, the widest text cut first, never below
    :func:`least_width`."""
    natural = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
    least = [least_width(column, [row[i] for row in cells]) for i, column in enumerate(columns)]
    kept, used = 0, 1
    while kept < len(columns) and used + least[kept] + 3 <= width:
        used += least[kept] + 3
        kept += 1
    kept = max(kept, 1)
    widths = natural[:kept]
    excess = sum(widths) + 3 * kept + 1 - width
    while excess > 0:
        slack = [w - m for w, m in zip(widths, least)]
        if max(slack) <= 0:
            break
        widths[slack.index(max(slack))] -= 1
        excess -= 1
    return widths


def error(message: str) -> None:
    """One line on stderr, no markup interpretation."""
    print(f"prune: error: {message}", file=sys.stderr, flush=True)


def exit_with(err: Exception, code: int = 2) -> NoReturn:
    """One line and ``SystemExit`` -- for code that Hydra calls (callbacks, launchers), which turns
    an ordinary exception into a warning or a traceback; a ``BaseException`` passes through it."""
    error(str(err))
    raise SystemExit(code) from None
