"""The lesson notebooks are committed with the outputs of a top-to-bottom run.

``scripts/execute_lessons.py`` runs each lesson (nbclient, widget state stored) and records
the sha256 of its sources in ``metadata.bayesnas.sources_sha256``. These tests read the
committed files only (nothing is executed):

* the stored hash matches the current sources (else the outputs are stale);
* the cells that print or end in an expression have outputs, and only cells tagged
  ``raises-exception`` hold an error;
* every widget-panel cell shows a widget view whose models are in the stored widget state, and
  the panel's Image holds a PNG (so the panel shows its plot on a code host), except in a panel
  with a button (a search), which draws only when pressed;
* every lesson has at least two ``# NBVAL_CHECK_OUTPUT`` cells, each with a stored output
  (nbval compares those with a fresh run).

The last tests feed each check a broken copy of a notebook, to show that it can fail.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
PANEL_CALL = re.compile(r"\bwidgets\.\w+_panel\(")
PNG_B64 = "iVBORw0KGgo"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _load_script():
    spec = importlib.util.spec_from_file_location("execute_lessons", ROOT / "scripts" / "execute_lessons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute_lessons = _load_script()


def _code_cells(nb):
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _expects_output(source: str) -> bool:
    """A cell should show something when it calls print/display at its top level or its last
    statement is a bare expression that is not a call (a value Jupyter shows), or a panel/figure."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            f = node.value.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("print", "display"):
                return True
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        value = tree.body[-1].value
        if not isinstance(value, ast.Call):
            return True  # a name or attribute: Jupyter shows its value
        f = value.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name.endswith("_panel") or name in ("Markdown",)
    return False


def stale_problems(nb, name: str) -> list[str]:
    stored = execute_lessons.stored_sha256(nb)
    if stored != execute_lessons.sources_sha256(nb):
        why = "no stored outputs hash" if stored is None else "sources changed since the outputs were stored"
        return [f"{name}: {why}; run `python scripts/execute_lessons.py lessons/{name}` and commit the result"]
    return []


def output_problems(nb, name: str) -> list[str]:
    problems = []
    for i, c in _code_cells(nb):
        tags = c.metadata.get("tags", [])
        errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if errors and "raises-exception" not in tags:
            problems.append(f"{name} cell {i}: stored output is an error ({errors[0].get('ename')})")
        if "raises-exception" in tags and not errors:
            problems.append(f"{name} cell {i}: tagged raises-exception but no error is stored")
        if _expects_output(c.source) and not c.get("outputs"):
            problems.append(f"{name} cell {i}: prints or shows a value but has no stored output")
        if c.get("execution_count") is None and c.source.strip():
            problems.append(f"{name} cell {i}: not executed (execution_count is null)")
    return problems


def _models_under(state: dict, model_id: str) -> list[dict]:
    """The stored widget models in the tree under model_id (the model and its children)."""
    seen, todo, out = set(), [model_id], []
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        model = state[mid]
        out.append(model)
        for child in model.get("state", {}).get("children", []):
            if isinstance(child, str) and child.startswith("IPY_MODEL_"):
                todo.append(child[len("IPY_MODEL_"):])
    return out


def _png_of(model: dict) -> str | None:
    value = model.get("state", {}).get("value")
    data = [b.get("data", "") for b in model.get("buffers", []) if b.get("path") == ["value"]]
    return next((v for v in [value, *data] if isinstance(v, str) and v.startswith(PNG_B64)), None)


def widget_problems(nb, name: str) -> list[str]:
    """Every panel cell shows a widget view whose models are in the stored widget state; a panel
    that draws when it is made (no button) holds a PNG in its Image. A panel with a button (a
    search) draws only when pressed, so its Image may be empty."""
    problems = []
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for i, c in _code_cells(nb):
        if not PANEL_CALL.search(c.source):
            continue
        views = [o["data"][WIDGET_VIEW]["model_id"] for o in c.get("outputs", [])
                 if WIDGET_VIEW in o.get("data", {})]
        if not views:
            problems.append(f"{name} cell {i}: the panel's stored output has no widget view")
        for model_id in views:
            models = _models_under(state, model_id)
            if not models:
                problems.append(f"{name} cell {i}: widget {model_id} is not in the stored widget state")
                continue
            images = [m for m in models if m.get("model_name") == "ImageModel"]
            has_button = any(m.get("model_name") == "ButtonModel" for m in models)
            if not images:
                problems.append(f"{name} cell {i}: the stored panel has no Image model")
            elif not has_button and not any(_png_of(m) for m in images):
                problems.append(f"{name} cell {i}: the panel's stored Image holds no PNG")
    return problems


def check_cell_problems(nb, name: str) -> list[str]:
    marked = [(i, c) for i, c in _code_cells(nb) if c.source.lstrip().startswith(CHECK_MARK)]
    problems = []
    if len(marked) < 2:
        problems.append(f"{name}: {len(marked)} {CHECK_MARK} cell(s), at least 2 needed")
    for i, c in marked:
        text = [o for o in c.get("outputs", []) if o.get("output_type") == "stream" or "text/plain" in o.get("data", {})]
        if not text:
            problems.append(f"{name} cell {i}: {CHECK_MARK} cell without a stored text output")
    return problems


CHECKS = {"stale": stale_problems, "outputs": output_problems, "widgets": widget_problems,
          "check_cells": check_cell_problems}


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_committed_outputs(path, check):
    nb = nbformat.read(path, as_version=4)
    problems = CHECKS[check](nb, path.name)
    assert not problems, "\n".join(problems)


def test_every_lesson_found():
    assert len(LESSONS) == 5, [p.name for p in LESSONS]


# ----- each check fails on a broken copy -----

@pytest.fixture(scope="module")
def panel_nb():
    """A lesson with a widget panel (all five have one)."""
    for path in LESSONS:
        nb = nbformat.read(path, as_version=4)
        if any(PANEL_CALL.search(c.source) for _, c in _code_cells(nb)):
            return path.name, nb
    pytest.fail("no lesson has a widget panel any more: the panel checks would test nothing")


def test_stale_check_fails_on_edited_source(panel_nb):
    name, nb = panel_nb
    nb = copy.deepcopy(nb)
    next(c for c in nb.cells if c.cell_type == "markdown").source += "\nan edit"
    problems = stale_problems(nb, name)
    assert len(problems) == 1 and f"python scripts/execute_lessons.py lessons/{name}" in problems[0]
    del nb.metadata["bayesnas"]
    assert stale_problems(nb, name)


def test_output_check_fails_on_cleared_outputs(panel_nb):
    name, nb = panel_nb
    nb = copy.deepcopy(nb)
    i, c = next((i, c) for i, c in _code_cells(nb) if "print(" in c.source)
    c.outputs = []
    assert any(f"cell {i}:" in p for p in output_problems(nb, name))
    c.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])]
    assert any("error" in p for p in output_problems(nb, name))


def test_widget_check_fails_without_state_or_png(panel_nb):
    name, nb = panel_nb
    broken = copy.deepcopy(nb)
    for model in broken.metadata["widgets"][WIDGET_STATE]["state"].values():
        model.pop("buffers", None)
        model.get("state", {}).pop("value", None)
    assert any("PNG" in p for p in widget_problems(broken, name))
    broken = copy.deepcopy(nb)
    for model in broken.metadata["widgets"][WIDGET_STATE]["state"].values():
        if model.get("model_name") == "ImageModel":
            model["model_name"] = "LabelModel"
    assert any("no Image model" in p for p in widget_problems(broken, name))
    broken = copy.deepcopy(nb)
    del broken.metadata["widgets"]
    assert widget_problems(broken, name)
    broken = copy.deepcopy(nb)
    for _, c in _code_cells(broken):
        if PANEL_CALL.search(c.source):
            c.outputs = []
    assert any("widget view" in p for p in widget_problems(broken, name))


def test_check_cell_check_fails_without_marks(panel_nb):
    name, nb = panel_nb
    nb = copy.deepcopy(nb)
    for _, c in _code_cells(nb):
        c.source = c.source.replace(CHECK_MARK, "# checked")
    assert any("at least 2" in p for p in check_cell_problems(nb, name))


def test_expects_output_rule():
    assert _expects_output('print("x")')
    assert _expects_output("x = 1\nx")
    assert _expects_output("widgets.edge_mixture_panel()")
    assert _expects_output("%matplotlib inline\nfig = f()\nfig")
    assert not _expects_output("x = 1")
    assert not _expects_output("def f():\n    print(1)")
    assert not _expects_output("r = run(cfg)")
