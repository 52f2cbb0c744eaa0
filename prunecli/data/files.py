"""``text_file``: a user's own corpus, ``.txt`` (one document) or ``.jsonl`` (one per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunecli.data import TEXT_SOURCES
from prunecli.errors import PruneError


def read_jsonl(path: Path, field: str) -> list[str]:
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PruneError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or field not in record:
                raise PruneError(f"{path}:{number}: no {field!r} field (set data.<calibration|eval>.field)")
            documents.append(str(record[field]))
    return documents


@TEXT_SOURCES.register("text_file")
def text_file(cfg: Any) -> list[str]:
    """UTF-8 ``.txt`` read as one document, or ``.jsonl`` with one ``{field: text}`` per line."""
    if not cfg.get("path"):
        raise PruneError("data source text_file needs a path: data.eval.path=FILE (or data.calibration.path=FILE)")
    path = Path(str(cfg.path)).expanduser()
    if path.is_dir():
        raise PruneError(f"text file {str(path)!r} is a directory, not a .txt or .jsonl file")
    if not path.is_file():
        raise PruneError(f"text file {str(path)!r} does not exist")
    try:
        if path.suffix == ".jsonl":
            documents = read_jsonl(path, cfg.get("field", "text"))
        else:
            documents = [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as err:
        raise PruneError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not any(doc.strip() for doc in documents):
        raise PruneError(f"text file {str(path)!r} is empty")
    return documents
