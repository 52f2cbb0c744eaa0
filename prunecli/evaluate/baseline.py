"""The unpruned model's scores, cached (``baseline_cache``): a sweep evaluates each dense baseline once.

Every job of a sweep over methods and sparsities scores the same unpruned model on the same
data first; the scores are stored as ``<baseline_cache>/<key>.json`` and read back by every
later run with the same key. The key is a SHA-256 over what the scores depend on:

* the ``model`` node (source, name or path, revision, config, dtype, device, offload mode --
  not the offload folder) and the run's ``seed`` (a tiny model is built from it);
* for a local model folder, the name, size and modification time of each of its files;
* the ``eval`` node (the evaluators and their options) and the eval data: ``data.eval`` (and a
  text file's size and modification time), ``data.seqlen``, ``data.max_eval_tokens``, ``data.seed``;
* the versions of prunecli, torch and transformers.

Jobs running at once take an exclusive ``flock`` on ``<key>.lock``: the first computes and
writes the file (atomically), the others wait for it and read it. A run that finds the file says
so on the console and in ``metrics.json`` (``baseline_cached``). ``baseline_cache=null`` always
evaluates.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prunecli.outputs import jsonable, write_atomic

log = logging.getLogger(__name__)

UNKEYED_MODEL_KEYS = ("offload_folder",)  # where a run keeps its scratch, not what it scores


def baseline_key(cfg: DictConfig, device: str) -> str:
    """The cache key of the run's dense baseline (see module doc)."""
    import torch
    import transformers

    from prunecli import __version__

    model = {key: value for key, value in OmegaConf.to_container(cfg.model, resolve=True).items() if key not in UNKEYED_MODEL_KEYS}
    data = cfg.data
    described = {
        "model": model, "device": device, "seed": cfg.get("seed"), "files": folder_fingerprint(model.get("name_or_path")),
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "data": {"eval": OmegaConf.to_container(data.eval, resolve=True), "seqlen": data.seqlen,
                 "max_eval_tokens": data.max_eval_tokens, "seed": data.seed, "file": file_fingerprint(data.eval.get("path"))},
        "versions": [__version__, torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: Any) -> list | None:
    """(size, mtime) of a text file the eval data is read from; None without one."""
    if not path or not Path(str(path)).expanduser().is_file():
        return None
    stat = Path(str(path)).expanduser().stat()
    return [stat.st_size, stat.st_mtime_ns]


def folder_fingerprint(name_or_path: Any) -> list | None:
    """(name, size, mtime) of every file of a local model folder; None for anything else (a hub id)."""
    if not name_or_path:
        return None
    folder = Path(str(name_or_path)).expanduser()
    if not folder.is_dir():
        return None
    return sorted((path.name, stat.st_size, stat.st_mtime_ns) for path in folder.iterdir() if path.is_file() for stat in [path.stat()])


def cached_scores(folder: str | None, key: str, evaluate: Callable[[], dict]) -> tuple[dict, bool]:
    """``(scores, cached)``: the stored scores of ``key`` in ``folder``, or ``evaluate()`` stored there.
    A cache that cannot be written costs the run nothing but the saving (a warning)."""
    if not folder or str(folder).lower() in ("none", "null"):
        return evaluate(), False
    root = Path(folder).expanduser()
    path = root / f"{key}.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{key}.lock", "a")
    except OSError as err:
        log.warning("baseline_cache %s cannot be written (%s): the dense baseline is evaluated, not cached", root, err.strerror or err)
        return evaluate(), False
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another job computing this baseline: wait for its file
        stored = read(path)
        if stored is not None:
            return stored, True
        scores = evaluate()
        write_atomic(path, json.dumps(jsonable(scores), indent=2))
        return scores, False


def read(path: Path) -> dict | None:
    """The stored scores, or None when there are none (or the file is not readable JSON: computed anew)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None
