"""Prompt sets: the paper's set and PromptBench's from the mirror, the online shape, user JSON/YAML files."""

from __future__ import annotations

import json

import pytest
import yaml

import coinlib.core.promptsets as prompts
from coinlib.core.groups import EVAL_GROUPS
from coinlib.core.promptsets import PromptSetError, load_prompt_set, select
from coinlib.core.tasks import GLUE_TASKS


def test_paper_set_has_five_groups_of_six_for_every_glue_task(mirror):
    ps = load_prompt_set("coin_eval_prompts", mirror)
    chosen = select(ps, EVAL_GROUPS, GLUE_TASKS)
    assert sorted(chosen) == sorted(EVAL_GROUPS)
    assert all(len(chosen[g][t]) == 6 for g in EVAL_GROUPS for t in GLUE_TASKS)
    for g in EVAL_GROUPS:  # MNLI-m/-mm use MNLI's instructions
        assert chosen[g]["mnli_matched"] == chosen[g]["mnli"] == chosen[g]["mnli_mismatched"]
    assert chosen["clean"]["sst2"] != chosen["checklist"]["sst2"]


def test_promptbench_clean_prompts(mirror):
    ps = load_prompt_set("promptbench_prompts", mirror)
    assert list(ps) == ["clean"]
    assert len(ps["clean"]["sst2"]) == 10 and ps["clean"]["mnli_matched"] == ps["clean"]["mnli"]
    assert not any("{content}" in p for p in ps["clean"]["sst2"])  # the vendored set the paper's code formats


def test_online_shape_is_read_like_the_mirror(monkeypatch):
    origin = {"clean": {"sst2": ["Is it positive? "]}, "checklist": {"sst2": ["Is it positive? abcdefghij "]}}
    monkeypatch.setattr(prompts, "load_json_artifact", lambda name, mirror: {"source": "x", "origin": origin})
    assert load_prompt_set("coin_eval_prompts") == origin
    monkeypatch.setattr(prompts, "load_json_artifact", lambda name, mirror: {"source": "x", "origin": origin["clean"]})
    assert load_prompt_set("promptbench_prompts") == {"clean": origin["clean"]}


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_user_file(tmp_path, suffix):
    data = {"clean": {"sst2": ["A ", "B "], "mnli": ["C "]}, "mine": {"sst2": ["D "]}}
    path = tmp_path / f"set{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data), encoding="utf-8")
    ps = load_prompt_set(path)
    assert ps["clean"]["sst2"] == ["A ", "B "] and ps["clean"]["mnli_mismatched"] == ["C "]
    assert select(ps, ["clean"], ["sst2"], n_instructions=1) == {"clean": {"sst2": ["A "]}}


@pytest.mark.parametrize("content, match", [
    ({"clean": ["A"]}, "group 'clean' must map"),
    ({"clean": {"sst2": []}}, "clean.sst2 must be a non-empty list"),
    ({"clean": {"sst2": ["ok", 3]}}, "clean.sst2 must be a non-empty list"),
    ({}, "no groups"),
])
def test_malformed_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(PromptSetError, match=match):
        load_prompt_set(path)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(PromptSetError, match="neither a known name"):
        load_prompt_set(tmp_path / "missing.json")
    (tmp_path / "p.txt").write_text("x", encoding="utf-8")
    with pytest.raises(PromptSetError, match="unsupported prompt-set file type"):
        load_prompt_set(tmp_path / "p.txt")
    (tmp_path / "p.yaml").write_text("clean: [unclosed", encoding="utf-8")
    with pytest.raises(PromptSetError, match="cannot parse"):
        load_prompt_set(tmp_path / "p.yaml")


def test_a_group_or_task_given_twice_in_a_user_file_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('clean:\n  sst2: ["A "]\n  rte: ["B "]\n  sst2: ["C "]\n', encoding="utf-8")
    with pytest.raises(PromptSetError, match=r"p\.yaml: line 4, column 3: key 'sst2' is given twice in one mapping "
                                             r"\(first on line 2\)\. Fix: remove one of them"):
        load_prompt_set(path)


def test_select_names_missing_groups_and_tasks():
    ps = {"clean": {"sst2": ["A "]}}
    with pytest.raises(PromptSetError, match=r"no group\(s\) \['semantic'\]"):
        select(ps, ["clean", "semantic"], ["sst2"])
    with pytest.raises(PromptSetError, match=r"no instructions for task\(s\) \['rte'\]"):
        select(ps, ["clean"], ["sst2", "rte"])
