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

Some lessons read the repository's measurements (``benchmarks/*.json``, ``benchmarks/bench.py``) through
``minigrok.shipped.repository_dir()``, the repository minigrok is installed from, so the student edition runs from
any folder (and under ``nbgrader autograde``) on a machine where minigrok is installed from a clone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INSTALL_HINT = 'the lessons command needs nbgrader; install it with: pip install -e ".[course]"'
STUDENT_README = """\
# minigrok lessons: student edition

Written by `python -m minigrok lessons --student` from the answer key in minigrok's repository (`lessons/`).
In every exercise the solution is replaced by `raise NotImplementedError()` under the function's signature and
docstring: write the function, then run the locked check cell below it, which fails until your answer is right.
Write your answers to the questions in the cells that say YOUR ANSWER HERE. A worked answer follows some checks:
try the exercise first.

The notebooks read the shipped model and the repository's measurements through the installed package, so clone
minigrok's repository (your teacher says where), install it from the clone with `pip install -e ".[lessons]"`
(minigrok, Jupyter, matplotlib), and run `jupyter lab` in this folder.
SYLLABUS.md is the course plan: the order of the lessons, the readings and the final projects.
"""


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
    """Write the student edition of every ``*.ipynb`` in ``source`` to ``dest``, with a README.md for students and
    a copy of ``source``'s SYLLABUS.md. Returns the notebooks written. Refuses (ValueError, FileExistsError,
    FileNotFoundError, OSError) a ``dest`` inside ``source``, a ``dest`` that is a file or cannot be made, and, unless
    force, a ``dest`` that already holds any file it would write (a student's work, or their own README). Each file
    is written to a temporary name and renamed, so an error leaves no half-written file."""
    import nbformat

    if not source.is_dir():
        raise FileNotFoundError(f"--from {source}: " + ("is a file, not a folder" if source.exists() else "not found"))
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {source.resolve()}")
    if dest.resolve().is_relative_to(source.resolve()):  # pytest would collect the stubbed copies as lessons
        raise ValueError(f"--student {dest} is inside the answer key {source.resolve()}; choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"--student {dest} is a file, not a folder: give a new or empty folder")
    texts = {"README.md": STUDENT_README}
    if (source / "SYLLABUS.md").is_file():
        texts["SYLLABUS.md"] = (source / "SYLLABUS.md").read_text(encoding="utf-8")
    there = [name for name in [p.name for p in notebooks] + list(texts) if (dest / name).exists()]
    if there and not force:
        raise FileExistsError(
            f"--student {dest} already holds {', '.join(there[:3])}{' ...' if len(there) > 3 else ''} (a student's "
            "work?); choose another folder, or pass --force to overwrite what is there"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create --student {dest}: {e.strerror}") from None
    written = []
    for path in notebooks:
        out = dest / path.name
        tmp = out.with_name(out.name + ".tmp")
        nbformat.write(student_notebook(nbformat.read(path, as_version=4)), tmp)
        tmp.replace(out)
        written.append(out)
    for name, text in texts.items():
        tmp = dest / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(dest / name)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--student", metavar="DIR", required=True, help="write the student edition (solutions stubbed) to DIR"
    )
    p.add_argument("--from", dest="source", metavar="LESSONS", help="answer-key folder (default: the repo's lessons/)")
    p.add_argument("--force", action="store_true", help="overwrite the lesson files already in DIR")


def run(args) -> int:
    try:
        import nbgrader.preprocessors  # noqa: F401
    except ImportError:
        print(f"minigrok: error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    if not args.student.strip():  # Path("") is the current folder
        raise ValueError("--student needs a folder name, e.g. --student class")
    source = Path(args.source) if args.source else lessons_dir()
    written = write_student_edition(source, Path(args.student), force=args.force)
    print(f"wrote the student edition of {len(written)} notebooks to {args.student}")
    return 0
