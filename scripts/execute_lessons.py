"""Execute the lesson notebooks top to bottom and store their outputs, widget state included.

    python scripts/execute_lessons.py                        # all five lessons
    python scripts/execute_lessons.py lessons/01_darts_relaxation.ipynb
    python scripts/execute_lessons.py --check                # list stale notebooks, run nothing

Each notebook runs in a fresh ``python3`` kernel in ``lessons/`` (nbclient, with
``store_widget_state=True``, so the panels' Image widgets keep their drawn PNG and show on a
code host). ``BAYESNAS_RUNS`` points at a temporary folder, so no run lands in the tree.
The notebook is written back with its outputs and ``metadata.bayesnas.sources_sha256``: the
sha256 of its code and markdown cells' sources, in order. ``tests/test_lesson_outputs.py``
fails when a notebook's sources no longer match that hash (its outputs are stale).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"


def sources_sha256(nb) -> str:
    """sha256 over the code and markdown cells' types and sources, in order (outputs excluded)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type in ("code", "markdown"):
            h.update(cell.cell_type.encode())
            h.update(b"\0")
            h.update(cell.source.encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def stored_sha256(nb) -> str | None:
    return nb.metadata.get("bayesnas", {}).get("sources_sha256")


def is_stale(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return stored_sha256(nb) != sources_sha256(nb)


def execute(path: Path, timeout: int = 900) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    runs = tempfile.mkdtemp(prefix="bayesnas-execute-")
    prev = os.environ.get("BAYESNAS_RUNS")
    os.environ["BAYESNAS_RUNS"] = runs  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}},
                                store_widget_state=True)
        client.execute()
    finally:
        if prev is None:
            os.environ.pop("BAYESNAS_RUNS", None)
        else:
            os.environ["BAYESNAS_RUNS"] = prev
        shutil.rmtree(runs, ignore_errors=True)
    nb.metadata.setdefault("bayesnas", {})["sources_sha256"] = sources_sha256(nb)
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: lessons/*.ipynb)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 listing the notebooks whose stored outputs are stale; execute nothing")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(LESSONS.glob("*.ipynb"))

    if args.check:
        stale = [p for p in paths if is_stale(p)]
        for p in stale:
            print(f"stale: {os.path.relpath(p)} (run: python scripts/execute_lessons.py {os.path.relpath(p)})")
        return 1 if stale else 0

    for p in paths:
        t0 = time.perf_counter()
        print(f"executing {os.path.relpath(p)} ...", flush=True)
        execute(p, timeout=args.timeout)
        print(f"  done in {time.perf_counter() - t0:.0f} s, {p.stat().st_size / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
