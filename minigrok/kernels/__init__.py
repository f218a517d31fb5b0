"""Numba twins of the hot loops; each has a NumPy reference and a test tying them together.

Importing this package chooses where Numba caches the compiled kernels, before any kernel module is imported. Numba
keys its on-disk cache by each function's own source file (numba/numba #1833, #9483): a cached kernel that calls a
jitted function from another file, or reads a constant from a reference module, keeps running the old machine code
after that other file changes. So the cache lives in a folder named by a hash of the package's location, the
kernels' files and every module they import (``CACHE_DIR``, in ``$NUMBA_CACHE_DIR/minigrok`` if that is set, else
``$XDG_CACHE_HOME/minigrok`` or ``~/.cache/minigrok``): an edit, a ``git pull`` or a new version compiles afresh, an
unchanged package loads what it compiled before. Older folders are removed, the most recently used few kept.

The integer dot products of Q8_0/Q4_0 weights have two implementations, chosen here for this CPU
(``INTEGER_DOT``): "vnni" (vnni.py: the vpdpbusd instruction of AVX-512 VNNI or AVX-VNNI, written as an LLVM
intrinsic) where the CPU has it, else "portable" (quant_kernels.py: plain loops LLVM vectorizes for any CPU). The
environment variable ``MINIGROK_INTEGER_DOT=portable`` forces the plain loops (to compare them, or if the
instruction misbehaves); the choice is part of the cache folder's name.

Compiling takes a while the first time (~30 s on 2 cores), so it prints one line on stderr saying so: on import
for a new CACHE_DIR, and in :func:`compiling` for each kind of input compiled for the first time.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numba
from llvmlite import binding as llvm

PACKAGE = Path(__file__).resolve().parents[1]  # minigrok/
KEEP_VERSIONS = 4  # cache folders of other versions of the code kept (learners switch back and forth)


def kernel_sources(package: Path = PACKAGE) -> list[Path]:
    """kernels/*.py and every module of the package they import, directly or not (read with ast, not imported):
    the kernels compile those modules' constants and helpers into their machine code."""
    todo, seen = sorted((package / "kernels").glob("*.py")), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or (node.level == 0 and node.module.split(".")[0] != "minigrok"):
                continue
            base = path.parents[node.level - 1] if node.level else package.parent
            target = base.joinpath(*(node.module or "").split("."))
            modules = [target.with_suffix(".py"), target / "__init__.py"] + [
                target / f"{a.name}.py" for a in node.names
            ]
            todo += [m for m in modules if m.is_file()]
    return sorted(seen)


def integer_dot() -> str:
    """ "vnni" if this CPU has the 256-bit vpdpbusd instruction (AVX-512 VNNI with AVX-512 VL, or AVX-VNNI), as LLVM
    reads the host's features, Numba compiles for this CPU (no NUMBA_CPU_NAME) and MINIGROK_INTEGER_DOT is not
    "portable"; else "portable". Raises ValueError for any other value of MINIGROK_INTEGER_DOT."""
    asked = os.environ.get("MINIGROK_INTEGER_DOT", "")
    if asked not in ("", "vnni", "portable"):
        raise ValueError(
            f"MINIGROK_INTEGER_DOT={asked!r}: use 'portable' (the plain loops), 'vnni' or nothing (VNNI where the CPU "
            "has it)"
        )
    if numba.config.CPU_NAME not in (None, "host"):  # NUMBA_CPU_NAME: compiling for another CPU than this one
        return "portable"  # (LLVM aborts the process on an instruction the target CPU lacks: no VNNI unless sure)
    features = llvm.get_host_cpu_features()
    has = (features.get("avx512vnni") and features.get("avx512vl")) or features.get("avxvnni")
    return "vnni" if has and asked != "portable" else "portable"


INTEGER_DOT = integer_dot()


def source_hash(package: Path = PACKAGE) -> str:
    """A hash (16 hex digits) of where the package is, INTEGER_DOT, and the names and bytes of
    :func:`kernel_sources`. (Numba files its cache by each source file's folder too, so another checkout or install
    compiles its own.)"""
    digest = hashlib.sha256(str(package).encode() + b"\0" + INTEGER_DOT.encode() + b"\0")
    for path in kernel_sources(package):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _cache_roots() -> list[Path]:
    """Where the cache may go, in order: a minigrok folder in $NUMBA_CACHE_DIR or else the user's cache folder;
    then one in the temporary folder (a read-only home). Never Numba's default beside the sources (keyed by file)."""
    user = os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    per_user = f"minigrok-{os.getuid()}" if hasattr(os, "getuid") else "minigrok"  # Windows: the temp dir is per user
    return [Path(user) / "minigrok", Path(tempfile.gettempdir()) / per_user]


def _prune(root: Path, keep: Path) -> None:
    """Delete the kernel folders of other versions of the code, but the KEEP_VERSIONS most recently used."""
    others = [p for p in root.glob("numba-*") if p.is_dir() and p != keep]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEEP_VERSIONS:]:
        shutil.rmtree(old, ignore_errors=True)


def _make_cache_dir() -> tuple[Path, bool]:
    """(the cache folder for this version of the code, whether it is new), created; older folders pruned."""
    name = f"numba-{source_hash()}"
    for root in _cache_roots():
        folder = root / name
        new = not folder.is_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.utime(folder)  # marks it used, for _prune
        except OSError:
            continue
        if new:
            _prune(root, folder)
        return folder, new
    raise OSError(f"no writable folder for compiled kernels: set NUMBA_CACHE_DIR to one (minigrok/{name} goes in it)")


CACHE_DIR, _first_run = _make_cache_dir()
numba.config.CACHE_DIR = str(CACHE_DIR)  # read when each @njit(cache=True) below this package is decorated

_announced = False


def _announce(what: str, seconds: str) -> None:
    global _announced
    if not _announced:
        _announced = True
        print(
            f"minigrok: compiling {what} with Numba (once for this version of the code, ~{seconds} s on 2 cores); "
            f"cached in {CACHE_DIR}",
            file=sys.stderr,
            flush=True,
        )


if _first_run:
    _announce("the kernels", "30")  # the kernel modules compile their fixed-signature functions as they are imported


@contextlib.contextmanager
def compiling(what: str, seconds: str = "15"):
    """Wrap the first call of kernels that compile for one kind of input, e.g. ``compiling("the Q8_0 decode
    step")``: if that has not been compiled into CACHE_DIR yet, say so on stderr (one line per process: the
    first line, printed on import for a new CACHE_DIR, covers it), and remember that it now is. ``seconds``: a
    rough duration to print (measured on a 2-vCPU AMD EPYC)."""
    marker = CACHE_DIR / f"compiled {what}"
    if not marker.exists():
        _announce(what, seconds)
    yield
    with contextlib.suppress(OSError):
        marker.touch()
