"""The lessons as a student meets them: JupyterLab in headless Chromium.

Starts JupyterLab on localhost, opens lessons 1 and 2 in Debian's ``chromium`` (driven by
Selenium with the system ``chromedriver``), runs every cell, moves a slider of the lesson's
widget panel with the keyboard, and asserts that the panel's picture changed. Screenshots
go to ``$BAYESNAS_SCREENSHOTS`` (the committed ones in ``assets/screenshots/`` were made
with ``BAYESNAS_SCREENSHOTS=assets/screenshots``), else to a temporary folder.

Needs ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them with apt) and
``selenium`` (the ``test`` extra). Without a browser the test is skipped on a developer's
machine and fails under CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS = {  # lesson -> the panel's slider to move and its picture
    "01_darts_relaxation.ipynb": "edge_mixture_panel",
    "02_gaussian_alphas_ngvi.ipynb": "regression_panel",
}
RUN_TIMEOUT_S = 420


def _need(path: str) -> None:
    if shutil.which(path) is None:
        msg = f"{path} is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free localhost port, serving a copy of the lessons."""
    _need("chromium")
    _need("chromedriver")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    runs = tmp_path_factory.mktemp("browser-runs")
    root = tmp_path_factory.mktemp("browser-root")  # a copy: JupyterLab autosaves what it opens
    shutil.copytree(REPO / "lessons", root / "lessons")
    # the lab extensions (ipywidgets' front end) sit under the interpreter's share/jupyter;
    # in a virtual environment that sees its base's packages, that is the base's
    data = [str(Path(p) / "share" / "jupyter") for p in dict.fromkeys((sys.prefix, sys.base_prefix))]
    jupyter_path = os.pathsep.join([*data, os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "BAYESNAS_RUNS": str(runs), "JUPYTER_CONFIG_DIR": str(runs / "cfg"),
           "JUPYTER_PATH": jupyter_path,
           "JUPYTERLAB_SETTINGS_DIR": str(runs / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(runs / "workspaces")}
    log = open(runs / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.expose_app_in_browser=True"], cwd=root, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("JupyterLab did not start: " + (runs / "lab.log").read_text()[-2000:])
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshots() -> Path:
    folder = Path(os.environ.get("BAYESNAS_SCREENSHOTS") or (Path(os.environ.get("TMPDIR", "/tmp"))
                                                              / "bayesnas-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, script: str, timeout: float, what: str):
    end, value = time.time() + timeout, None
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {value!r})")


#: the current notebook's state: (kernel status, cells without an execution count, errors)
STATE_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.sessionContext || !w.sessionContext.session) return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code' && c.model.sharedModel.source.trim());
const pending = cells.filter(c => c.model.executionCount === null).length;
const errors = cells.filter(c => !(c.model.metadata.tags || []).includes('raises-exception') &&
    c.model.outputs.toJSON().some(o => o.output_type === 'error')).length;
return [w.sessionContext.session.kernel.status, pending, errors, cells.length];
"""


@pytest.mark.slow
@pytest.mark.parametrize("lesson", list(LESSONS))
def test_a_student_runs_the_lesson_and_moves_a_slider(lab, browser, lesson) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, token = lab
    shots = _screenshots()
    stem = lesson.split("_")[0]
    browser.get(f"{url}/lab/tree/lessons/{lesson}?token={token}")
    _wait(browser, "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
          "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel "
          "&& w.sessionContext.session.kernel.status === 'idle');", 120, "the notebook and its kernel")
    # clear the committed outputs, so that what appears below comes from this run
    browser.execute_script("return window.jupyterapp.commands.execute('editor:clear-all-outputs')"
                           ".catch(() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs'));")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    time.sleep(3)
    try:
        state = _wait(browser, f"const s = (function() {{ {STATE_JS} }})();"
                      "return s && s[0] === 'idle' && s[1] === 0 ? s : null;", RUN_TIMEOUT_S,
                      "every cell to run")
    except AssertionError as err:
        now = browser.execute_script(f"return (function() {{ {STATE_JS} }})();")
        browser.save_screenshot(str(shots / f"lesson{stem}-timeout.png"))
        raise AssertionError(f"{err}; state now (kernel, pending, errors, cells): {now}") from None
    assert state[2] == 0, f"{state[2]} cells of {lesson} ended in an error"
    # run-all leaves the view at the last cell, and JupyterLab lays out only the cells near the
    # view: bring the panel's cell (the one calling LESSONS[lesson]) to the middle first
    nb = "window.jupyterapp.shell.currentWidget.content"
    index = f"{nb}.widgets.findIndex(c => c.model.sharedModel.getSource().includes({LESSONS[lesson]!r}))"
    browser.execute_script(f"const i = {index}; {nb}.activeCellIndex = i; return {nb}.scrollToItem(i, 'center');")
    time.sleep(2)
    # the panel: its slider handle and its picture, looked up inside the panel's own cell (the
    # lesson opened before is still open in a hidden tab, so a document-wide query can find its
    # panel, which has no size)
    cell = f"(function() {{ const c = {nb}.widgets[{index}]; return c ? c.node : null; }})()"
    _wait(browser, f"const n = {cell}; return n && n.querySelector('.widget-vbox .noUi-handle') "
          "&& n.querySelector('.widget-vbox img') ? true : null;", 60, "the widget panel's slider and picture")
    box = browser.execute_script(f"return {cell}.querySelector('.widget-vbox');")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    time.sleep(1)
    img = box.find_element(By.CSS_SELECTOR, "img")
    before_src = img.get_attribute("src")
    assert before_src and img.get_attribute("naturalWidth") not in (None, "0"), "the panel drew no picture"
    browser.save_screenshot(str(shots / f"lesson{stem}-panel-before.png"))
    # the handle can be laid out a moment after scrolling (JupyterLab renders cells lazily):
    # wait until it has a size before the keyboard reaches it
    _wait(browser, f"const h = {cell}.querySelector('.widget-vbox .noUi-handle');"
          "const r = h && h.getBoundingClientRect(); return r && r.width > 0 && r.height > 0 ? true : null;",
          60, "the slider handle to be laid out")
    handle = browser.execute_script(f"return {cell}.querySelector('.widget-vbox .noUi-handle');")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
    for _ in range(8):
        browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    _wait(browser, f"const i = {cell}.querySelector('.widget-vbox img');"
          f"return i && i.src !== {before_src!r} ? true : null;", 90,
          "the panel's picture to change after the slider moved")
    time.sleep(1)
    after = browser.execute_script(f"return {cell}.querySelector('.widget-vbox img');")
    assert after.get_attribute("src") != before_src
    assert after.get_attribute("naturalWidth") not in (None, "0")
    browser.save_screenshot(str(shots / f"lesson{stem}-panel-after.png"))
