"""Every module of the package imports on its own, first, in a fresh interpreter (no import cycle that
only an import order elsewhere happens to avoid: an API user may start from any module)."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prunecli"


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first_in_a_fresh_interpreter():
    def imports(name: str) -> str | None:
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=PACKAGE.parent, capture_output=True, text=True)
        return None if result.returncode == 0 else f"{name}: {(result.stderr.strip().splitlines() or ['?'])[-1]}"

    names = module_names()
    assert len(names) > 40 and "prunecli.structured.remove" in names
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [line for line in pool.map(imports, names) if line]
    assert failures == []
