"""Where the project's shipped files live.

The ``assets/`` folder sits beside the package in the repository (the README's set-up
installs the package in editable mode). ``BAYESNAS_ASSETS`` overrides it.
The lessons write their runs to :func:`lesson_runs_dir` (``BAYESNAS_RUNS`` overrides it;
the test suite points it at a temporary folder so that nothing lands in the source tree).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["assets_dir", "lesson_runs_dir"]


def assets_dir() -> Path:
    """Return the ``assets/`` directory (``$BAYESNAS_ASSETS`` if set)."""
    env = os.environ.get("BAYESNAS_ASSETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "assets"


def lesson_runs_dir() -> Path:
    """Return where the lesson notebooks write their runs.

    ``$BAYESNAS_RUNS`` if set, else ``runs/lessons`` relative to the working directory
    (for a notebook: its own folder, ``lessons/``).
    """
    env = os.environ.get("BAYESNAS_RUNS")
    if env:
        return Path(env)
    return Path("runs/lessons")
