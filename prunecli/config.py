"""Where the Hydra config tree lives: ``configs/`` of a source checkout, else the installed copy."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


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
