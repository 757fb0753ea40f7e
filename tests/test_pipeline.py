"""Headless runs: parameters are validated before any notebook (or any notebook cell after them) does work."""

from __future__ import annotations

import pytest

from coinlib import pipeline


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
