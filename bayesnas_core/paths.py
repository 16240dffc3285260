"""Where the project's shipped files live.

The ``assets/`` folder sits beside the package in the repository (the README's set-up
installs the package in editable mode). ``BAYESNAS_ASSETS`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["assets_dir"]


def assets_dir() -> Path:
    """Return the ``assets/`` directory (``$BAYESNAS_ASSETS`` if set)."""
    env = os.environ.get("BAYESNAS_ASSETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "assets"
