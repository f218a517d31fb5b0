"""Where the shipped weights are (one function for the CLI, the lessons, the bench and the tests), and the
repository the lessons read their measurements from.

``weights/`` sits at the top of the repository. pyproject.toml installs it as the package data
``minigrok.weights`` (setuptools' ``package-dir``), so an editable install, ``pip install .`` and a built wheel
all find it through ``importlib.resources``, from any working directory. A checkout that was never installed
(``python -m minigrok`` run in the repository root) finds it beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_NAME = "minigrok-shakespeare.gguf"


def weights_dir() -> Path:
    """The folder holding the shipped GGUF files and their model card (README.md)."""
    try:
        folder = resources.files("minigrok.weights")  # installed: site-packages/minigrok/weights
    except ModuleNotFoundError:  # an editable install or a checkout: the repository's own weights/
        return Path(__file__).resolve().parents[1] / "weights"
    return Path(str(folder.joinpath("README.md"))).parent  # (a namespace package: a MultiplexedPath over one folder)


def shipped_model(name: str = DEFAULT_MODEL_NAME) -> Path:
    """The path of a shipped file in weights/, e.g. ``shipped_model("minigrok-shakespeare-q8_0.gguf")``.

    The file may be missing (a trimmed checkout); callers check and say how to get one."""
    return weights_dir() / name


def repository_dir() -> Path:
    """The minigrok repository this package was installed from (an editable install, or a checkout run in place):
    the folder holding ``benchmarks/`` and, once prepared, ``data/``. The lessons find it this way wherever the
    notebook runs (the repository's lessons/, a student's folder, nbgrader's ``autograded/<student>/<lesson>/``).

    Raises FileNotFoundError when minigrok was installed from a wheel, which carries no ``benchmarks/``."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "benchmarks").is_dir():
        raise FileNotFoundError(
            f"no benchmarks/ beside the minigrok package ({repo}): the lessons read the repository's measurements; "
            'clone the repository and install it with `pip install -e ".[lessons]"`'
        )
    return repo
