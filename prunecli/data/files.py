"""``text_file``: a user's own corpus, ``.txt`` (one document) or ``.jsonl`` (one per line)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prunecli.data import SourceOptions, register_source
from prunecli.errors import PruneError


@dataclass(frozen=True)
class TextFileOptions(SourceOptions):
    path: str | None = None  # a .txt (one document) or .jsonl (one per line) file
    field: str = "text"  # the .jsonl field holding the text

    def check(self, prefix: str) -> None:
        if not self.path:
            raise PruneError(f"data source text_file needs a path: {prefix}.path=FILE")


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


@register_source("text_file", TextFileOptions)
def text_file(options: TextFileOptions) -> list[str]:
    """UTF-8 ``.txt`` read as one document, or ``.jsonl`` with one ``{field: text}`` per line."""
    path = Path(options.path).expanduser()
    if path.is_dir():
        raise PruneError(f"text file {str(path)!r} is a directory, not a .txt or .jsonl file")
    if not path.is_file():
        raise PruneError(f"text file {str(path)!r} does not exist")
    try:
        if path.suffix == ".jsonl":
            documents = read_jsonl(path, options.field)
        else:
            documents = [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError as err:
        raise PruneError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not any(doc.strip() for doc in documents):
        raise PruneError(f"text file {str(path)!r} is empty")
    return documents
