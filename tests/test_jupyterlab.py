"""The interactive path as a user sees it: JupyterLab in a real (headless) Chromium.

Starts JupyterLab on 127.0.0.1 (free port, one-off token), opens each numbered notebook, checks it renders
with the "COIN (.venv)" kernel, clears the outputs, runs the parameters and validation cells with
Shift+Enter and checks they print the validated run with no error output. The shortest notebook
(RUN_TO_END, 01: it needs no trained run) then runs to its last cell with "Run All Cells", and what that cell shows
must be its committed output (nbval checks the same cell headless), with no traceback in any cell. One
screenshot per notebook goes to runs/jupyterlab/. Needs Debian's chromium and chromium-driver (`.ci/run` installs
them); skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from coinlib import pipeline
from coinlib.core.sources import REPO_ROOT

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="browser test needs Chromium: apt-get install chromium chromium-driver (.ci/run installs them)")

KERNEL_DISPLAY_NAME = "COIN (.venv)"
SHOTS = REPO_ROOT / "runs" / "jupyterlab"
WAIT_S = 90  # per step; JupyterLab's first load on a busy 2-core machine takes a while
RUN_TO_END, RUN_ALL_WAIT_S = "01_build_data.ipynb", 600  # builds the smoke data (seconds when already built)
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
STDERR = "[data-mime-type='application/vnd.jupyter.stderr']"  # stderr streams and tracebacks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET") -> object:
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving copies of notebooks/; yields (base URL, token); stopped afterwards."""
    tmp = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = tmp / "server.log"
    served = tmp / "notebooks"  # copies: nothing the browser does (autosave, checkpoints) touches the repository
    served.mkdir()
    for nb in pipeline.notebooks():
        shutil.copy(nb, served / nb.name)
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast (and no fetch)
    tracker = tmp / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')  # every cell in the page, so the last one can be read
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={served}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
             f"--LabApp.user_settings_dir={tmp / 'settings'}", "--allow-root",  # CI runs as root
             # offline: no update check and no extension index lookups
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium through its own chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                "--window-size=1200,800", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _text(root, css: str) -> str:
    found = root.find_elements("css selector", css)
    return found[0].text.strip() if found else ""


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def _command(browser, wait, label: str) -> None:
    """Run a JupyterLab command by its label from the command palette (Ctrl+Shift+C), as a user would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).key_down(Keys.CONTROL).key_down(Keys.SHIFT).send_keys("c").key_up(Keys.SHIFT) \
        .key_up(Keys.CONTROL).perform()
    palette = wait.until(lambda d: d.find_element("css selector", ".lm-CommandPalette-input"))
    palette.send_keys(label, Keys.ENTER)


def _run_to_last_cell(browser, nb: str) -> None:
    """Run All Cells; the last code cell must finish and show its committed output, no cell a traceback."""
    import nbformat
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    last = browser.find_elements("css selector", f"{PANEL} .jp-CodeCell")[-1]
    _command(browser, wait, "Run All Cells")
    wait.until(lambda d: _text(last, ".jp-InputPrompt") != "[ ]:", message=f"{nb}: Run All Cells queued nothing")
    busy = f"{PANEL} .jp-Notebook-ExecutionIndicator:not([data-status='idle'])"
    try:  # every cell ran (the last prompt is numbered), or the kernel stopped at an error (idle, last cell not run)
        WebDriverWait(browser, RUN_ALL_WAIT_S, poll_frequency=1).until(
            lambda d: re.fullmatch(r"\[\d+\]:", _text(last, ".jp-InputPrompt"))
            or (not d.find_elements("css selector", busy) and _text(last, ".jp-InputPrompt") != "[*]:"))
    except TimeoutException:
        pass
    outputs = [e.text for e in browser.find_elements("css selector", f"{PANEL} .jp-OutputArea-output")]
    tracebacks = [t for t in outputs if "Traceback (most recent call last)" in t or re.search(r"^\w+Error: ", t, re.M)]
    assert not tracebacks, f"{nb}: a cell failed in JupyterLab:\n" + "\n".join(tracebacks)
    prompt = _text(last, ".jp-InputPrompt")
    assert re.fullmatch(r"\[\d+\]:", prompt), f"{nb}: the last cell did not run (prompt {prompt!r})"
    browser.execute_script("arguments[0].scrollIntoView()", last)
    shown = "\n".join(e.text for e in last.find_elements("css selector", ".jp-OutputArea-output"))
    committed = [c for c in nbformat.read(pipeline.NOTEBOOKS_DIR / nb, as_version=4).cells if c.cell_type == "code"][-1]
    expected = "".join(o.get("text", "") for o in committed.outputs if o.get("output_type") == "stream")
    assert expected.strip() and _lines(shown) == _lines(expected), (
        f"{nb}: the last cell shows\n{shown}\ninstead of its committed output\n{expected}")


@pytest.mark.parametrize("nb", [nb.name for nb in pipeline.notebooks()])
def test_notebook_runs_in_jupyterlab(nb, lab, browser):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / nb.replace(".ipynb", ".png")
    wait = WebDriverWait(browser, WAIT_S)
    try:
        browser.get(f"{base}/lab/tree/{nb}?reset&token={token}")
        # The notebook renders: its cells are on the page and a kernel name is shown.
        wait.until(lambda d: d.find_elements("css selector", f"{PANEL} .jp-CodeCell"),
                   message=f"{nb}: no notebook cells rendered")
        # ... and its kernel starts (JupyterLab shows a kernel dialog when the notebook's is missing).
        idle = f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']"
        try:
            wait.until(lambda d: (_text(d, f"{PANEL} .jp-Toolbar-kernelName") == KERNEL_DISPLAY_NAME
                                  and d.find_elements("css selector", idle))
                       or d.find_elements("css selector", ".jp-Dialog"))
        except TimeoutException:
            pass
        kernel = _text(browser, f"{PANEL} .jp-Toolbar-kernelName")
        dialogs = [e.text.replace("\n", " ") for e in browser.find_elements("css selector", ".jp-Dialog")]
        assert kernel == KERNEL_DISPLAY_NAME and not dialogs and browser.find_elements("css selector", idle), (
            f"{nb}: JupyterLab shows kernel {kernel!r} (dialog: {dialogs}), expected {KERNEL_DISPLAY_NAME!r} "
            "and idle; is the 'coin' kernel spec installed? (`make setup` registers it: ipykernel install)")

        # Clear the committed outputs (command palette, as a user would), then run the first two code cells.
        _command(browser, wait, "Clear Outputs of All Cells")
        wait.until(lambda d: not d.find_elements("css selector", f"{PANEL} .jp-OutputArea-output"),
                   message=f"{nb}: outputs not cleared")
        code = browser.find_elements("css selector", f"{PANEL} .jp-CodeCell")
        params_cell, check_cell = code[0], code[1]
        params_cell.find_element("css selector", ".jp-InputPrompt").click()
        for _ in range(2):  # Shift+Enter: run the cell, select the next
            ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).pause(0.5).perform()
        wait.until(lambda d: _text(check_cell, ".jp-InputPrompt") == "[2]:"
                   or d.find_elements("css selector", f"{PANEL} {STDERR}"),
                   message=f"{nb}: the parameters and validation cells did not finish")
        errors = [e.text for e in browser.find_elements("css selector", f"{PANEL} {STDERR}")]
        assert not errors, f"{nb}: error output in JupyterLab:\n" + "\n".join(errors)
        assert _text(params_cell, ".jp-InputPrompt") == "[1]:"
        out = [e.text.strip() for e in check_cell.find_elements("css selector", ".jp-OutputArea-output")]
        assert out == ["run 'smoke', model 'smollm2-135m-instruct'"], f"{nb}: validation cell printed {out!r}"
        if nb == RUN_TO_END:
            _run_to_last_cell(browser, nb)
    finally:
        browser.save_screenshot(str(shot))
        for session in _api(base, token, "/api/sessions") or []:  # stop this notebook's kernel
            _api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
    assert shot.stat().st_size > 10_000
