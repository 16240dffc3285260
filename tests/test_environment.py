"""The two install routes agree, and the lessons' runs stay out of the source tree.

``environment.yml`` (conda) and ``pyproject.toml`` (pip) must name the same packages with
the same lower bounds: the runtime dependencies plus the ``test`` extra.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from bayesnas_core.paths import lesson_runs_dir

ROOT = Path(__file__).resolve().parent.parent

# conda-forge name -> PyPI name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch", "ray-core": "ray"}
# conda entries that are the interpreter and the installer, not dependencies of the package
CONDA_TOOLING = {"python", "pip"}


def _norm(name: str) -> str:
    """PEP 503 normalisation: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(spec: str) -> tuple[str, str | None]:
    """``"numpy>=1.24"`` (pip or conda syntax) -> ``("numpy", "1.24")``; no bound -> None."""
    spec = spec.split(";", 1)[0].strip()
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$", spec)
    assert m, f"cannot read requirement {spec!r}"
    name, rest = m.group(1), m.group(2)
    lower = re.search(r">=\s*([0-9][^,\s]*)", rest)
    return _norm(name), lower.group(1) if lower else None


# --- pyproject.toml ----------------------------------------------------------------------

def _toml_lists_by_hand(text: str) -> dict:
    """Enough of TOML for Python 3.10 without tomli: the two string arrays we need."""
    def array(key: str, section: str) -> list[str]:
        body = text.split(f"[{section}]", 1)[1]
        body = re.split(r"^\[", body, maxsplit=1, flags=re.M)[0]
        m = re.search(rf"^{key}\s*=\s*\[(.*?)\]", body, flags=re.M | re.S)
        assert m, f"no {key} in [{section}]"
        return re.findall(r'"([^"]*)"', m.group(1))

    return {"project": {"dependencies": array("dependencies", "project"),
                        "optional-dependencies": {"test": array("test", "project.optional-dependencies")}}}


def _load_pyproject() -> dict:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib.loads(text)
    try:
        import tomli
    except ImportError:
        return _toml_lists_by_hand(text)
    return tomli.loads(text)


def pyproject_requirements() -> dict[str, str | None]:
    project = _load_pyproject()["project"]
    out: dict[str, str | None] = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        name, lower = _split(spec)
        if name in out:  # listed twice (nbval): the two entries must agree
            assert out[name] == lower, f"pyproject.toml gives {name} two lower bounds"
        out[name] = lower
    return out


# --- environment.yml ---------------------------------------------------------------------

def _yaml_by_hand(text: str) -> dict:
    """Enough of YAML for environment.yml without PyYAML: its top-level lists and the
    one nested ``- pip:`` list."""
    data: dict = {}
    key = None
    pip_list: list | None = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if indent == 0:
            k, _, v = item.partition(":")
            key, pip_list = k.strip(), None
            data[key] = v.strip() or []
        elif item.startswith("- "):
            value = item[2:].strip()
            if pip_list is not None and indent > pip_indent:
                pip_list.append(value)
            elif value.endswith(":"):
                pip_list, pip_indent = [], indent
                data[key].append({value[:-1].strip(): pip_list})
            else:
                pip_list = None
                data[key].append(value)
    return data


def _load_environment() -> dict:
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return _yaml_by_hand(text)
    return yaml.safe_load(text)


def environment_requirements() -> tuple[dict[str, str | None], list[str]]:
    """(name -> lower bound) over the conda and pip entries, and the pip lines that are
    options (``-e .[test]``), not packages."""
    deps = _load_environment()["dependencies"]
    out: dict[str, str | None] = {}
    options: list[str] = []

    def add(name: str, lower: str | None, where: str) -> None:
        assert name not in out, f"environment.yml lists {name} twice ({where})"
        out[name] = lower

    for entry in deps:
        if isinstance(entry, dict):
            for spec in entry["pip"]:
                if spec.startswith("-"):
                    options.append(spec)
                else:
                    add(*_split(spec), "pip")
            continue
        name, lower = _split(str(entry))
        if name in CONDA_TOOLING:
            continue
        add(_norm(CONDA_TO_PYPI.get(name, name)), lower, "conda")
    return out, options


# --- the tests ---------------------------------------------------------------------------

def test_environment_and_pyproject_name_the_same_packages():
    pip, (conda, _) = pyproject_requirements(), environment_requirements()
    only_pip = sorted(set(pip) - set(conda))
    only_conda = sorted(set(conda) - set(pip))
    assert not only_pip and not only_conda, (
        f"only in pyproject.toml: {only_pip}; only in environment.yml: {only_conda}")


def test_environment_and_pyproject_give_the_same_lower_bounds():
    pip, (conda, _) = pyproject_requirements(), environment_requirements()
    differ = {name: (pip[name], conda[name]) for name in set(pip) & set(conda)
              if pip[name] and conda[name] and pip[name] != conda[name]}
    assert not differ, f"lower bounds differ (pyproject.toml, environment.yml): {differ}"


def test_environment_installs_the_package_itself():
    _, options = environment_requirements()
    assert "-e .[test]" in options


def test_yaml_fallback_reads_environment_like_pyyaml():
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert _yaml_by_hand(text) == yaml.safe_load(text)


def test_toml_fallback_reads_pyproject_like_tomllib():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = _load_pyproject()["project"]
    by_hand = _toml_lists_by_hand(text)["project"]
    assert by_hand["dependencies"] == project["dependencies"]
    assert by_hand["optional-dependencies"]["test"] == project["optional-dependencies"]["test"]


def test_lesson_runs_dir_honours_bayesnas_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYESNAS_RUNS", str(tmp_path / "elsewhere"))
    assert lesson_runs_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("BAYESNAS_RUNS")
    assert lesson_runs_dir() == Path("runs/lessons")


def test_session_points_lesson_runs_outside_the_repository():
    runs = Path(os.environ["BAYESNAS_RUNS"]).resolve()
    assert runs.is_dir()
    assert ROOT not in runs.parents and runs != ROOT
