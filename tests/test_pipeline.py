"""Headless runs: parameters are validated before any notebook (or any notebook cell after them) does work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from coinlib import pipeline
from coinlib.core.sources import REPO_ROOT


def test_notebooks_are_the_six_stages_in_order():
    names = [nb.name for nb in pipeline.notebooks()]
    assert names == ["01_build_data.ipynb", "02_train.ipynb", "03_evaluate.ipynb", "04_representations.ipynb",
                     "05_task_categories.ipynb", "06_lambda_ablation.ipynb"]
    assert [nb.name[:2] for nb in pipeline.notebooks(["02", "05"])] == ["02", "05"]


def test_invalid_file_stops_before_any_notebook(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run: {{name: never, output_root: {tmp_path / 'out'}}}\ntrain: {{lamda: 3}}\n")
    assert pipeline.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.lamda" in err and "did you mean 'lambda'" in err
    assert not (tmp_path / "out").exists()


def test_papermill_injected_values_are_validated_in_the_first_cell(tmp_path):
    """`papermill NB out -f bad.yaml` fails in the validation cell, naming the key, before any stage code."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    nb = pipeline.notebooks(["02"])[0]
    out = tmp_path / "out.ipynb"
    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(str(nb), str(out), parameters={"train": {"lambda": "lots"}},
                            kernel_name=pipeline.KERNEL_NAME, progress_bar=False, cwd=str(nb.parent))
    assert "ParamsError" in str(err.value) and "train.lambda" in str(err.value)
    import nbformat

    executed = nbformat.read(out, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failing = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    injected = [i for i, c in enumerate(code) if "injected-parameters" in c.metadata.get("tags", [])]
    assert failing == [injected[0] + 1]  # the first code cell after the injected parameters


@pytest.mark.parametrize("module", ["coinlib.train.trainer", "coinlib.evaluate.runner"])
def test_stage_command_lines_reject_bad_files_with_status_2(module, tmp_path, capsys):
    import importlib

    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate: {n_per_task: none}\n")
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main([str(bad)])
    assert exit_info.value.code == 2
    assert "evaluate.n_per_task" in capsys.readouterr().err


def _pipeline(tmp_path, yaml_text: str, *only: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m coinlib.pipeline`` as a user runs it; stdout and stderr as one text."""
    params = tmp_path / "p.yaml"
    params.write_text(yaml_text)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "coinlib.pipeline", str(params), "--only", *only],
                          cwd=cwd or tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)


def test_passing_run_prints_exactly_one_line_per_notebook(tmp_path, mirror):
    """No kernel chatter (unencrypted-TCP warning, KeyboardInterrupt at shutdown), no progress, no totals."""
    out = f"runs/pytest-{tmp_path.name}"  # inside the checkout: notebook 01 prints its data folder relative to it
    try:
        done = _pipeline(tmp_path, f"base: {REPO_ROOT / 'params' / 'smoke.yaml'}\n"
                                   f"run: {{name: quiet, output_root: {out}, figures_root: {tmp_path / 'fig'}}}\n",
                         "01", cwd=REPO_ROOT)
        assert done.returncode == 0, done.stdout
        executed_path = f"{out}/quiet/notebooks/01_build_data.ipynb"
        assert re.fullmatch(rf"01_build_data\.ipynb +\d+ s  {executed_path}\n", done.stdout), done.stdout
        executed = nbformat.read(REPO_ROOT / executed_path, as_version=4)
    finally:
        shutil.rmtree(REPO_ROOT / out, ignore_errors=True)
    assert pipeline.output_problems(executed) == [
        f"notebook metadata papermill.{key}: absolute path {str(REPO_ROOT / path)!r}"
        for key, path in (("input_path", "notebooks/01_build_data.ipynb"), ("output_path", executed_path))]
    streams = [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert any("entries: 100%|" in o["text"] for o in streams)  # tqdm.auto wrote a text bar, not a widget


def test_failing_cell_is_printed_with_its_source_and_error(tmp_path):
    done = _pipeline(tmp_path, f"base: {REPO_ROOT / 'params' / 'smoke.yaml'}\n"
                               f"run: {{name: failing, output_root: {tmp_path / 'out'}, figures_root: {tmp_path / 'fig'}}}\n"
                               "analysis: {lambda_runs: {'1000': never_trained}}\n", "06")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == ("[coin] 06_lambda_ablation.ipynb failed in cell [4] "
                        "(executed notebook: out/failing/notebooks/06_lambda_ablation.ipynb):"), done.stdout
    assert "ours = tables.ours_by_lambda(P)" in done.stdout  # the failing cell's source
    assert "MissingInput" in done.stdout and "never_trained" in done.stdout  # and its error
    assert "\x1b[" not in done.stdout and "Kernel is running over TCP" not in done.stdout


def test_kernel_process_chatter_stays_off_the_terminal_unless_the_kernel_dies(tmp_path, capfd):
    """What the kernel process itself writes (a libzmq assertion at shutdown, once in CI) is kept in a log that
    is shown only when the kernel dies."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": pipeline.KERNEL_NAME, "language": "python",
                                                           "display_name": "COIN (.venv)"}})
    nb.cells = [nbformat.v4.new_code_cell("import os\nos.write(2, b'process-level chatter\\n')")]
    nbformat.write(nb, tmp_path / "quiet.ipynb")
    pipeline.execute(tmp_path / "quiet.ipynb", tmp_path / "quiet-out.ipynb")
    assert "process-level chatter" not in "".join(capfd.readouterr())

    nb.cells.append(nbformat.v4.new_code_cell("import time\ntime.sleep(0.5)  # ipykernel copies fd 2 in a thread\nos._exit(3)"))
    nbformat.write(nb, tmp_path / "dies.ipynb")
    with pytest.raises(pipeline.NotebookFailed) as failed:
        pipeline._execute_or_explain(tmp_path / "dies.ipynb", tmp_path / "dies-out.ipynb", None, pipeline.KERNEL_NAME)
    message = str(failed.value)
    assert message.startswith("[coin] dies.ipynb stopped: Kernel died") and "Out of memory" in message
    assert "the kernel process wrote:\nprocess-level chatter" in message


def test_headless_kernel_text_progress_and_no_library_deprecation_notices(tmp_path):
    """tqdm.auto writes text (not a widget); a transformers FutureWarning is filtered, the notebook's own is not."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": pipeline.KERNEL_NAME, "language": "python",
                                                           "display_name": "COIN (.venv)"}})
    nb.cells = [
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='bar'):\n    pass"),
        nbformat.v4.new_code_cell(
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "m = LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,\n"
            "                     num_attention_heads=2, num_key_value_heads=2, vocab_size=16))\n"
            "m.is_gradient_checkpointing  # deprecated in transformers 5 (peft still reads it)"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('mine', FutureWarning)"),
    ]
    nbformat.write(nb, tmp_path / "in.ipynb")
    pipeline.execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    bar, library, own = (c.outputs for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells)
    assert [o.output_type for o in bar] == ["stream"] * len(bar) and {o.name for o in bar} == {"stderr"}
    assert "bar: 100%|██████████| 3/3" in "".join(o.text for o in bar)
    assert [o.get("data", {}).get("text/plain") for o in library] == ["False"]  # and no warning beside it
    assert len(own) == 1 and "FutureWarning: mine" in own[0].text
