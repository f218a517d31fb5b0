"""Where the shipped weights are: one function for the CLI, the lessons, the bench and the tests.

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
