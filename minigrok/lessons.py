"""``python -m minigrok lessons --student DIR``: write the student edition of the lesson notebooks.

The notebooks in ``lessons/`` are the answer key, written in nbgrader's markup (https://nbgrader.readthedocs.io,
"Developing assignments"): each exercise's solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` in a
cell whose ``nbgrader`` metadata says ``solution: true``, and its check is a locked, autograded test cell
(``grade: true`` with a ``grade_id`` and ``points``). An instructor can therefore run ``nbgrader generate_assignment``
and ``nbgrader autograde`` on them as they are.

This command does the part a student needs without an nbgrader course directory: it runs nbgrader's own
``ClearSolutions`` (each solution becomes ``raise NotImplementedError()`` under the function's signature and
docstring) and ``ClearOutput`` preprocessors over every notebook and writes the results to DIR. nbgrader is an
optional dependency: ``pip install -e ".[course]"``.

Some lessons read the repository's measurements (``benchmarks/*.json``, ``benchmarks/bench.py``), found from the
notebook's own folder (``REPO = Path.cwd().parent ...``). In the student edition that line names the repository the
edition was written from, so the notebooks run from DIR wherever it is.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

INSTALL_HINT = 'the lessons command needs nbgrader; install it with: pip install -e ".[course]"'
# the line by which a lesson finds the repository from its own folder (lessons/)
REPO_LINE = re.compile(
    r'^(\w+) = Path\.cwd\(\)\.parent if Path\.cwd\(\)\.name == "lessons" else Path\.cwd\(\).*$', re.M
)


def lessons_dir() -> Path:
    """The repository's lessons/ folder (the answer key). Raises FileNotFoundError when minigrok is installed
    without its repository (the notebooks do not travel in the wheel)."""
    path = Path(__file__).resolve().parent.parent / "lessons"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no lessons/ folder next to the package ({path}); the notebooks are in the repository: clone it and "
            "install it with `pip install -e .`, or pass --from LESSONS"
        )
    return path


def student_notebook(nb):
    """The student edition of one notebook (an nbformat NotebookNode, not modified): solutions replaced by
    nbgrader's stub, every output and execution count cleared. Raises ImportError if nbgrader is missing and
    RuntimeError (nbgrader's) on malformed markup, e.g. a solution region in a cell not marked as a solution."""
    import copy

    from nbgrader.preprocessors import ClearOutput, ClearSolutions

    student = copy.deepcopy(nb)
    resources: dict = {}
    for preprocessor in (ClearSolutions(), ClearOutput()):
        student, resources = preprocessor.preprocess(student, resources)
    return student


def write_student_edition(source: Path, dest: Path, force: bool = False) -> list[Path]:
    """Write the student edition of every ``*.ipynb`` in ``source`` (and copy its ``*.md`` files) to ``dest``.
    Returns the notebooks written. Refuses (ValueError, FileExistsError, FileNotFoundError, OSError) a ``dest``
    inside ``source``, a ``dest`` that is a file or cannot be made, and, unless force, a ``dest`` that already holds
    lesson notebooks (a student's work). Each file is written to a temporary name and renamed, so an error leaves no
    half-written notebook."""
    import nbformat

    if not source.is_dir():
        raise FileNotFoundError(f"--from {source}: " + ("is a file, not a folder" if source.exists() else "not found"))
    if dest.resolve().is_relative_to(source.resolve()):  # pytest would collect the stubbed copies as lessons
        raise ValueError(f"--student {dest} is inside the answer key {source}; choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"--student {dest} is a file, not a folder")
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {source}")
    if not force and any((dest / p.name).exists() for p in notebooks):
        raise FileExistsError(f"--student {dest} already holds lesson notebooks (a student's work?); pass --force")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create --student {dest}: {e.strerror}") from None
    repo = source.resolve().parent
    written = []
    for path in notebooks:
        student = student_notebook(nbformat.read(path, as_version=4))
        for cell in student.cells:
            if cell.cell_type == "code":
                cell.source = REPO_LINE.sub(
                    lambda m: f"{m.group(1)} = Path({str(repo)!r})  # the repository this edition was written from",
                    cell.source,
                )
        out = dest / path.name
        tmp = out.with_name(out.name + ".tmp")
        nbformat.write(student, tmp)
        tmp.replace(out)
        written.append(out)
    for md in sorted(source.glob("*.md")):
        (dest / md.name).write_text(md.read_text(encoding="utf-8"), encoding="utf-8")
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--student", metavar="DIR", required=True, help="write the student edition (solutions stubbed) to DIR"
    )
    p.add_argument("--from", dest="source", metavar="LESSONS", help="answer-key folder (default: the repo's lessons/)")
    p.add_argument("--force", action="store_true", help="overwrite lesson notebooks already in DIR")


def run(args) -> int:
    try:
        import nbgrader.preprocessors  # noqa: F401
    except ImportError:
        print(f"minigrok: error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    source = Path(args.source) if args.source else lessons_dir()
    written = write_student_edition(source, Path(args.student), force=args.force)
    print(f"wrote the student edition of {len(written)} notebooks to {args.student}")
    return 0
