"""The layers point one way: the readable modules import nothing from minigrok.kernels, and loading the model
does not load Numba. minigrok/engine.py is the one place that brings the two together (ARCHITECTURE.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minigrok"
READABLE = ["layers", "attention", "moe", "model", "quant", "config", "sampling"]


def imported_modules(path: Path) -> set[str]:
    """Every module a top-level file of minigrok/ imports, relative imports resolved (``from .kernels import x``
    -> minigrok.kernels and minigrok.kernels.x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the package minigrok
                base = "minigrok" + ("." + base if base else "")
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return names


@pytest.mark.parametrize("module", READABLE)
def test_readable_modules_import_nothing_from_kernels(module):
    imports = imported_modules(PACKAGE / f"{module}.py")
    assert not {m for m in imports if m.startswith("minigrok.kernels") or m.split(".")[0] == "numba"}


def test_importing_the_model_does_not_load_numba():
    code = "import sys, minigrok.model; print(sorted(m for m in sys.modules if 'numba' in m or 'kernels' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
