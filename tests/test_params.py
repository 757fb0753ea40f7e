"""Parameter files: bases, validation and the error messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinlib.core.params import (
    PARAMS_DIR,
    Params,
    ParamsError,
    deep_merge,
    load_params,
    notebook_params,
    parse_sets,
    read_yaml,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", sorted(PARAMS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_params_file_validates(path):
    assert isinstance(load_params(path), Params)  # without a key given twice: read_yaml refuses those


@pytest.mark.parametrize("path", sorted((PARAMS_DIR / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_spec_loads(path):
    from coinlib.study.spec import load_spec

    assert load_spec(path).arms


def test_shipped_files_exist():
    assert list(PARAMS_DIR.glob("*.yaml")) and list((PARAMS_DIR / "studies").glob("*.yaml"))


@pytest.mark.parametrize("text, line, first", [
    ("run: {name: x}\ntrain:\n  lambda: 10\n  lambda: 100\n", 4, 3),
    ("run: {name: x}\nmodel:\n  lora: {r: 4, alpha: 8, r: 8}\n", 3, 3),
])
def test_a_key_given_twice_is_refused_naming_file_key_line_and_fix(tmp_path, text, line, first):
    path = write(tmp_path, "dup.yaml", text)
    key = "lambda" if "lambda" in text else "r"
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: line {line}, ")
    assert f"key {key!r} is given twice in one mapping (first on line {first})" in str(err.value)
    assert "Fix: remove one of them." in str(err.value)


def test_a_key_given_twice_in_a_set_value_is_refused():
    with pytest.raises(ParamsError, match=r"--set 'analysis.lambda_runs=\{1: a, 1: b\}': line 1, column 8: key 1 "
                                          r"is given twice .* Fix: remove one of them"):
        parse_sets(["analysis.lambda_runs={1: a, 1: b}"])
    assert parse_sets(["train.lambda=1", "train.lambda=2"]) == {"train": {"lambda": 2}}  # later --set still wins


def test_default_base_is_smoke_and_sections_merge_deeply(tmp_path):
    p = load_params(write(tmp_path, "x.yaml", "run: {name: x}\ntrain: {lambda: 10}\n"))
    smoke = load_params(PARAMS_DIR / "smoke.yaml")
    assert p.run.name == "x"
    assert p.train.lambda_ == 10
    # untouched keys of a touched section come from the base, not the schema default
    assert p.train.max_steps == smoke.train.max_steps
    assert p.model.name == smoke.model.name


def test_a_files_lambda_sweep_replaces_the_bases(tmp_path):
    p = load_params(write(tmp_path, "x.yaml", "run: {name: x}\nanalysis: {lambda_runs: {'10': ten}}\n"))
    assert p.analysis.lambda_runs == {"10": "ten"}  # smoke.yaml's runs are not merged in
    assert p.analysis.cit_run == load_params(PARAMS_DIR / "smoke.yaml").analysis.cit_run  # other keys still are


def test_base_chain_relative_to_including_file(tmp_path):
    write(tmp_path, "a.yaml", "base: null\nrun: {name: a, seed: 7}\nmodel: {name: m/n}\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nrun: {name: b}\n")
    p = load_params(write(tmp_path, "c.yaml", "base: b.yaml\ntrain: {contrastive: false}\n"))
    assert (p.run.name, p.run.seed, p.model.name, p.train.contrastive) == ("b", 7, "m/n", False)


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        load_params(tmp_path / "a.yaml")


@pytest.mark.parametrize("text, fragments", [
    pytest.param("train:\n  lamda: 10\n", ["train.lamda", "did you mean 'lambda'"], id="unknown-key"),
    pytest.param("trian: {}\n", ["unknown key 'trian'; did you mean 'train'"], id="unknown-section"),
    pytest.param("train: {lambda: lots}\n", ["train.lambda", "valid number", "'lots'"], id="wrong-type"),
    pytest.param("train: {temperature: 0}\n", ["train.temperature: Input should be greater than 0"], id="range"),
    pytest.param("train: {warmup_steps: 5, warmup_ratio: 0.1}\n",
                 ["train: warmup_steps (5) and warmup_ratio (0.1) are both set. Fix: set one of them"], id="across-keys"),
    pytest.param("evaluate: {tasks: [sst2, sst3]}\n", ["evaluate.tasks: unknown evaluation task 'sst3'; did you mean "
                 "'sst2'?", "coinlib.core.tasks.register"], id="unknown-task"),
    pytest.param("evaluate: {tasks: []}\n", ["evaluate.tasks: List should have at least 1 item"], id="no-task"),
    pytest.param("analysis: {represent_task: cloa}\n", ["analysis.represent_task: unknown evaluation task 'cloa'; "
                 "did you mean 'cola'?"], id="unknown-represent-task"),
    pytest.param("base: null\nrun: {name: r}\n", ["missing required key 'model'"], id="missing-section"),
    pytest.param("base: null\nrun: {seed: 1}\nmodel: {name: a/b}\n", ["missing required key 'run.name' (run name"],
                 id="missing-nested-key"),
    pytest.param("run:\n  name: x\ntrain: [lambda: 1\n", ["line 4, column 1", "YAML syntax error"], id="yaml-syntax"),
])
def test_bad_file_error_names_file_key_and_expectation(tmp_path, text, fragments):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_several_problems_are_all_listed(tmp_path):
    path = write(tmp_path, "bad.yaml", "train: {lambda: x, temperature: y}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "train.lambda" in str(err.value) and "train.temperature" in str(err.value)


def test_notebook_namespace_validation_catches_injected_typo():
    ns = {"base": "smoke.yaml", "run": {}, "model": {}, "data": {}, "train": {"lambda": 5}, "evaluate": {},
          "analysis": {}, "In": [], "_": None, "notebook_params": notebook_params}
    assert notebook_params(ns).train.lambda_ == 5
    ns["evalaute"] = {"n_per_task": 3}
    with pytest.raises(ParamsError, match=r"notebook parameters: unknown key 'evalaute'; did you mean 'evaluate'"):
        notebook_params(ns)


def test_derived_paths_share_data_between_runs_with_same_data(tmp_path):
    a = load_params(write(tmp_path, "a.yaml", "run: {name: a}\ntrain: {contrastive: false}\n"))
    b = load_params(write(tmp_path, "b.yaml", "run: {name: b}\n"))
    c = load_params(write(tmp_path, "c.yaml", "run: {name: c}\ndata: {size: 5}\n"))
    assert a.data_dir == b.data_dir != c.data_dir
    assert a.run_dir.name == "a" and a.figures_dir.name == "a"


def test_deep_merge_does_not_mutate_inputs():
    base = {"a": {"b": 1, "c": 2}}
    out = deep_merge(base, {"a": {"b": 3}})
    assert out == {"a": {"b": 3, "c": 2}} and base == {"a": {"b": 1, "c": 2}}


def test_smoke_trains_a_cit_and_a_coin_run_that_differ():
    """notebook 02 trains every run of the smoke's analyses, so 05 and 06 compare runs that really differ."""
    runs = {Q.run.name: Q for Q in load_params(PARAMS_DIR / "smoke.yaml").runs_to_train()}
    assert list(runs) == ["smoke", "smoke-cit", "smoke-lambda1"]
    assert [runs[n].train.contrastive for n in runs] == [True, False, True]
    assert [runs[n].train.lambda_ for n in runs] == [1000.0, 1000.0, 1.0]
    assert not any(runs[n].train.analysis_runs for n in ("smoke-cit", "smoke-lambda1"))
    # apart from name, contrastive and lambda the runs share every setting (the same data, recipe and seed)
    strip = lambda Q: {**Q.model_dump(), "run": {**Q.model_dump()["run"], "name": ""},  # noqa: E731
                       "train": {k: v for k, v in Q.model_dump()["train"].items()
                                 if k not in ("contrastive", "lambda_", "analysis_runs")}}
    assert strip(runs["smoke-cit"]) == strip(runs["smoke"]) == strip(runs["smoke-lambda1"])
    assert runs["smoke-cit"].data_dir == runs["smoke"].data_dir
    # files that name their runs' own parameter files train only themselves
    assert [Q.run.name for Q in load_params(PARAMS_DIR / "cpu-mini.yaml").runs_to_train()] == ["cpu-mini"]


def test_scheduler_and_report_choices_are_those_transformers_accepts():
    """``train.lr_scheduler`` / ``train.report_to`` choices (validated at load) follow the installed transformers."""
    import torch
    from transformers import get_scheduler
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    from transformers.trainer_utils import SchedulerType

    from coinlib.core.params import LR_SCHEDULERS, REPORT_TO

    assert set(REPORT_TO) == set(INTEGRATION_TO_CALLBACK)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    works = set()
    for kind in SchedulerType:
        try:
            get_scheduler(kind.value, optimizer, num_warmup_steps=1, num_training_steps=10)
        except (TypeError, ValueError):
            continue
        works.add(kind.value)
    assert set(LR_SCHEDULERS) == works - {"reduce_lr_on_plateau", "greedy"}  # those two need an eval strategy


def _parameters_cell(notebook) -> str:
    import nbformat

    cells = [c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: one cell tagged 'parameters'"
    return cells[0].source


@pytest.mark.parametrize("notebook", sorted((PARAMS_DIR.parent / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_parameters_cells_show_the_smoke_values_and_yield_to_papermill_files(notebook):
    """What a parameters cell shows is params/smoke.yaml's; a `papermill -f` file with another base is not mixed
    with the values shown (papermill injects the file's top-level keys as variables after the cell)."""
    cell = _parameters_cell(notebook)
    for section in ("model", "train", "data", "evaluate"):  # the values a reader changes are on view
        assert f"\n{section} = {{" in cell and "{}" not in cell.split(f"\n{section} = ", 1)[1].split("\n", 1)[0]
    ns: dict = {}
    exec(cell, ns)
    ns.pop("__builtins__")
    smoke = load_params(PARAMS_DIR / "smoke.yaml")
    assert notebook_params(dict(ns)).model_dump() == smoke.model_dump()
    for name in ("lambda10.yaml", "cpu-mini.yaml", "cit.yaml"):  # another base; the smoke base with some sections
        injected = {**ns, **read_yaml(PARAMS_DIR / name)}
        assert notebook_params(injected).model_dump() == load_params(PARAMS_DIR / name).model_dump(), name
