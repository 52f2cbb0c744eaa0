"""Where the Hydra config tree lives: ``configs/`` of a source checkout, else the installed copy;
and the resolvers its files use."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def short_hash(text: str) -> str:
    """6 hex digits of SHA-1: tells apart sweep jobs whose other name parts are alike."""
    return hashlib.sha1(str(text).encode()).hexdigest()[:6]


# ${short_hash:${hydra.job.override_dirname}} in the sweep subdir (configs/hydra/output/prunecli.yaml)
OmegaConf.register_new_resolver("short_hash", short_hash, replace=True)


def pruning_label(method: str, sparsity: float, pattern: str | None) -> str:
    """The run directory's method part: ``wanda_0.5``, ``wanda_2-4`` (N:M: its pattern), ``dense`` (a method
    that prunes nothing has no sparsity)."""
    from prunecli.methods import METHODS

    if method not in METHODS.names() or not METHODS.get(method).prunes:
        return str(method)
    if pattern and pattern != "unstructured":
        return f"{method}_{str(pattern).replace(':', '-')}"
    return f"{method}_{sparsity}"


# ${pruning_label:${hydra:runtime.choices.method},${sparsity},${pattern}} in the run directory names (same file)
OmegaConf.register_new_resolver("pruning_label", pruning_label, replace=True)


def config_dir() -> Path:
    """``<repo>/configs`` in a checkout (editable installs), ``prunecli/configs`` once installed."""
    source_tree = PACKAGE_DIR.parent / "configs"
    if (source_tree / "run.yaml").is_file():
        return source_tree
    return PACKAGE_DIR / "configs"


def config_groups() -> dict[str, list[str]]:
    """Config group (e.g. ``method``, ``data/eval``) -> the option names it offers."""
    root = config_dir()
    groups: dict[str, list[str]] = {}
    for folder, _, files in os.walk(root, followlinks=True):  # configs/experiment links to experiments/
        group = Path(folder).relative_to(root).as_posix()
        names = [Path(name).stem for name in files if name.endswith(".yaml")]
        if group != "." and names:
            groups.setdefault(group, []).extend(names)
    return {group: sorted(names) for group, names in sorted(groups.items())}
