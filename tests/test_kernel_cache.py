"""Compiled kernels never run stale code: the on-disk cache follows every source file (minigrok/kernels/__init__.py).

Numba keys its cache by each function's own file, so a cached kernel kept the old machine code of a jitted helper
from another file after that file changed (numba/numba #1833, #9483). Here a copy of the package runs a kernel in
a fresh process, a helper in another file is edited, and the next fresh process must see the edit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minigrok

# f32_matvec (kernels/decode.py) cuts its rows into n_chunks(...) blocks (kernels/blocks.py), then fills
# `out` block by block: with no blocks at all, `out` keeps its -1s.
RUN = """
import numpy as np
import minigrok
from minigrok.kernels.decode import f32_matvec
assert minigrok.__file__.startswith({src!r}), minigrok.__file__
out = np.full((1, 4), -1.0, np.float32)
f32_matvec(np.ones((1, 8), np.float32), np.ones((4, 8), np.float32), out, 1 << 30)
print(out.tolist())
"""
HELPER = "    return max(1, min(R, R * K // min_weights))\n"
EDITED = "    return 0  # edited by tests/test_kernel_cache.py\n"


def run_kernel(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", RUN.format(src=str(src))], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc.stderr


@pytest.mark.slow
def test_an_edit_to_a_helper_in_another_file_reaches_its_cached_caller(tmp_path):
    package = tmp_path / "src" / "minigrok"
    shutil.copytree(Path(minigrok.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))

    out, err = run_kernel(tmp_path)
    assert out == "[[8.0, 8.0, 8.0, 8.0]]"
    assert "minigrok: compiling" in err  # a new cache folder: the one line saying so
    out, err = run_kernel(tmp_path)
    assert out == "[[8.0, 8.0, 8.0, 8.0]]"
    assert "compiling" not in err  # the same code: loaded from the cache, silently
    with (package / "generate.py").open("a") as f:  # a module the kernels do not import: the cache still holds
        f.write("# edited by tests/test_kernel_cache.py\n")
    assert "compiling" not in run_kernel(tmp_path)[1]

    helper_file = package / "kernels" / "blocks.py"
    text = helper_file.read_text()
    assert text.count(HELPER) == 1, "n_chunks changed: update this test's edit"
    helper_file.write_text(text.replace(HELPER, EDITED))

    out, err = run_kernel(tmp_path)
    assert out == "[[-1.0, -1.0, -1.0, -1.0]]"  # the edited helper runs; stale code would still print 8s
    assert "minigrok: compiling" in err
    assert len(list((tmp_path / "cache" / "minigrok").glob("numba-*"))) == 2  # one folder per version of the code


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tmp_path):
    """Never Numba's default beside the sources (keyed by file, so stale): a temporary folder, named and keyed."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(blocker), "TMPDIR": str(tmp_path)}
    code = "from minigrok.kernels import CACHE_DIR, source_hash; print(CACHE_DIR); print(source_hash())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cache_dir, digest = proc.stdout.split()
    assert Path(cache_dir) == tmp_path / f"minigrok-{os.getuid()}" / f"numba-{digest}"
    assert Path(cache_dir).is_dir()
