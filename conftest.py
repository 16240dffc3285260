"""Session set-up for every pytest run in this repository (tests/ and the lesson notebooks).

The lesson notebooks write their runs to ``bayesnas_core.paths.lesson_runs_dir()``, which is
``$BAYESNAS_RUNS`` when set. Point it at a fresh temporary folder for the whole session, so
that ``pytest`` leaves no ``lessons/runs/`` in the source tree; the nbval kernels inherit
this process's environment. The folder is removed when the session ends.

This file sits at the repository root (not in tests/) because pytest loads a conftest only
from the folders above the paths it is given: ``pytest lessons/01_darts_relaxation.ipynb``
never reads ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_RUNS_TMP: str | None = None
_RUNS_PREV: str | None = None


def pytest_configure(config) -> None:
    global _RUNS_TMP, _RUNS_PREV
    if _RUNS_TMP is None:
        _RUNS_PREV = os.environ.get("BAYESNAS_RUNS")
        _RUNS_TMP = tempfile.mkdtemp(prefix="bayesnas-runs-")
        os.environ["BAYESNAS_RUNS"] = _RUNS_TMP


def pytest_unconfigure(config) -> None:
    global _RUNS_TMP
    if _RUNS_TMP is not None:
        shutil.rmtree(_RUNS_TMP, ignore_errors=True)
        if _RUNS_PREV is None:
            os.environ.pop("BAYESNAS_RUNS", None)
        else:
            os.environ["BAYESNAS_RUNS"] = _RUNS_PREV
        _RUNS_TMP = None
