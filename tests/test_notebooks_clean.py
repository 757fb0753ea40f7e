"""Committed notebooks hold no machine-specific absolute paths, no library warnings and no widget outputs.

Re-execute them with `python -m coinlib.pipeline --commit-outputs`, which avoids all three at the source
(headless kernels: text progress bars, third-party deprecation notices filtered) and checks the result.
"""

from __future__ import annotations

import nbformat
import pytest

from coinlib import pipeline
from coinlib.core.sources import REPO_ROOT


@pytest.mark.parametrize("nb", pipeline.notebooks(), ids=lambda p: p.name)
def test_committed_notebook_outputs_are_clean(nb):
    assert pipeline.output_problems(nbformat.read(nb, as_version=4), nb.name) == []


def _nb(*outputs, papermill=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=list(outputs))]
    if papermill:
        nb.metadata["papermill"] = papermill
    return nb


def _stderr(text):
    return nbformat.v4.new_output("stream", name="stderr", text=text)


def test_library_warning_with_its_path_is_found():
    tqdm_warning = ("/home/ann/coin/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not "
                    "found. Please update jupyter and ipywidgets. See "
                    "https://ipywidgets.readthedocs.io/en/stable/user_install.html\n  from .autonotebook import tqdm\n")
    assert pipeline.output_problems(_nb(_stderr(tqdm_warning)), "nb") == [
        "nb cell 0: absolute path '/home/ann/coin/.venv/lib/python3.11/site-packages/tqdm/auto.py:21:'",
        "nb cell 0: stderr warning '/home/ann/coin/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: "
        "IProgress not found. Please update jupyter and ipywidgets. See https://ipywidgets.readthedocs.io/en/stable/"
        "user_install.html'"]


def test_paths_in_any_text_output_and_in_papermill_metadata_are_found():
    table = nbformat.v4.new_output("execute_result", data={"text/plain": "saved to /tmp/x/fig.png",
                                                           "text/html": "<td>/work/main/runs/a</td>"})
    found = pipeline.output_problems(_nb(table, papermill={"input_path": "/srv/n.ipynb", "output_path": "n.ipynb"}))
    assert found == ["notebook cell 0: absolute path '/tmp/x/fig.png'",
                     "notebook cell 0: absolute path '/work/main/runs/a'",
                     "notebook metadata papermill.input_path: absolute path '/srv/n.ipynb'"]


def test_widget_outputs_and_other_libraries_log_warnings_are_found():
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "ab", "version_major": 2, "version_minor": 0},
        "text/plain": "entries:   0%|          | 0/48"})
    found = pipeline.output_problems(_nb(widget, _stderr("WARNING:transformers.modeling_utils:some notice\n")))
    assert found == ["notebook cell 0: widget output (headless runs write progress bars as text)",
                     "notebook cell 0: stderr warning 'WARNING:transformers.modeling_utils:some notice'"]


def test_clean_outputs_pass():
    """Relative paths, URLs, text progress bars and coinlib's own log messages are fine."""
    clean = _nb(_stderr("\rentries: 100%|██████████| 48/48 [00:00<00:00, 22725.66it/s]\n"),
                _stderr("WARNING:coinlib.train.batching:10 of 48 entries exceed cutoff_len=128 and were shortened\n"),
                _stderr("skipped tasks: anli_r1 (no data: no mirror file for facebook/anli (default/train_r1))\n"),
                nbformat.v4.new_output("stream", name="stdout",
                                       text="48 entries in runs/data/0123abcd; see https://arxiv.org/abs/2402.11138\n"),
                nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo/usr/lib/AAAA"}),
                papermill={"input_path": "01_build_data.ipynb", "output_path": "01_build_data.ipynb"})
    assert pipeline.output_problems(clean) == []


def test_normalise_makes_checkout_paths_relative():
    nb = _nb(nbformat.v4.new_output("stream", name="stdout", text=f"wrote {REPO_ROOT}/runs/smoke/x.csv\n"),
             papermill={"input_path": str(REPO_ROOT / "notebooks/03_evaluate.ipynb"), "output_path": "/tmp/a/b.ipynb"})
    pipeline._normalise(nb, "03_evaluate.ipynb")
    assert nb.cells[0].outputs[0]["text"] == "wrote runs/smoke/x.csv\n"
    assert nb.metadata["papermill"]["input_path"] == nb.metadata["papermill"]["output_path"] == "03_evaluate.ipynb"
