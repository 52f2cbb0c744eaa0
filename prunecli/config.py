"""Where the Hydra config tree lives: ``configs/`` of a source checkout, else the installed copy."""

from __future__ import annotations

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
    for yaml in root.rglob("*.yaml"):
        group = yaml.parent.relative_to(root).as_posix()
        if group != ".":
            groups.setdefault(group, []).append(yaml.stem)
    return {group: sorted(names) for group, names in sorted(groups.items())}
