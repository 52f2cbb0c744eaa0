"""Per-run files, each written atomically (temp file in the same folder, then ``os.replace``).

A run directory is finished when its ``metrics.json`` exists: it is written last.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

def file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the user's umask (``mkstemp`` makes 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temp file beside ``path`` (mode as ``open()`` gives, not ``mkstemp``'s 0o600) to write;
    moved over ``path`` when the block ends without error, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        yield Path(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    with replaced_atomically(path) as temp:
        temp.write_text(text, encoding="utf-8", newline="")


def save_figure(figure: Any, path: Path, dpi: int = 150) -> None:
    """A matplotlib figure to ``path``, atomically, in the format its suffix names."""
    with replaced_atomically(path) as temp:
        figure.savefig(temp, dpi=dpi, format=path.suffix.lstrip("."))


def jsonable(value: Any) -> Any:
    """NaN/inf become null so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(jsonable(data), indent=2, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
