"""The evaluation task registry: content formats, label words and accepted answers as in the paper's code; adding a
task is one registration that sampling, prompt selection, scoring, perturbation and the tables all see."""

from __future__ import annotations

import json

import pytest
import yaml

from coinlib.core import tasks as registry
from coinlib.core.tasks import GLUE_TASKS, TASKS, EvalTask, get_task, load_task


def test_the_papers_ten_tasks_are_registered():
    assert list(GLUE_TASKS) == ["cola", "mnli", "mnli_matched", "mnli_mismatched", "mrpc", "qnli", "qqp", "rte",
                                "sst2", "wnli"]
    assert set(GLUE_TASKS) <= set(TASKS)
    with pytest.raises(KeyError, match="unknown evaluation task 'stsb'"):
        get_task("stsb")


@pytest.mark.parametrize("task, row, text", [
    ("sst2", {"sentence": "good ."}, "good ."),
    ("qqp", {"question1": "A?", "question2": "B?"}, "Question 1: A? Question 2: B?"),
    ("mnli_mismatched", {"premise": "P", "hypothesis": "H"}, "Premise: P Hypothesis: H"),
    ("qnli", {"question": "Q", "sentence": "C"}, "Question: Q Context: C"),
    ("wnli", {"sentence1": "S1", "sentence2": "S2"}, "Sentence 1: S1 Sentence 2: S2"),
    ("sst2", {"sentence": "a {brace} b"}, "a {brace} b"),  # field values are not formatted again
])
def test_content_formats(task, row, text):
    assert get_task(task).content(row) == text


def test_label_words_follow_label_ids():
    assert get_task("rte").labels == ("entailment", "not_entailment")
    assert get_task("wnli").labels == ("not_entailment", "entailment")  # WNLI's ids are the other way round
    assert get_task("qqp").labels == ("not_equivalent", "equivalent")
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")


def test_accepted_answers_follow_the_reference_label_sets():
    """promptbench/config.py of luka-group/CoIN: SST-2, QNLI, RTE and WNLI accept '0'/'1' (LABEL_TO_ID maps them to
    the label ids, WNLI's '1' = entailment); CoLA, MRPC, QQP and the MNLI sets accept only label words."""
    numeric = {t for t in GLUE_TASKS if any(a.isdigit() for a, _ in get_task(t).answers)}
    assert numeric == {"sst2", "qnli", "rte", "wnli"}
    assert dict(get_task("wnli").accepted)["1"] == "entailment"
    assert dict(get_task("rte").accepted)["1"] == "not_entailment"
    assert dict(get_task("sst2").accepted)["0"] == "negative"


def test_categories_of_table_1():
    assert {t: TASKS[t].category for t in GLUE_TASKS} == {
        "cola": "grammar", "mnli": "nli", "mnli_matched": "nli", "mnli_mismatched": "nli", "mrpc": "paraphrase",
        "qnli": "nli", "qqp": "paraphrase", "rte": "nli", "sst2": "sentiment", "wnli": "nli"}


def test_bad_definitions_are_rejected_with_the_problem_named():
    with pytest.raises(ValueError, match="category 'fun'"):
        EvalTask("x", (("glue", "x", "validation"),), ("a", "b"), "{text}", "fun")
    with pytest.raises(ValueError, match="names no row field"):
        EvalTask("x", (("glue", "x", "validation"),), ("a", "b"), "constant")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(get_task("sst2"))


def test_sample_is_deterministic_nested_and_capped(mirror):
    a, b = load_task("rte", 20, mirror), load_task("rte", 20, mirror)
    assert a.equals(b)
    assert a["instance_id"].is_unique and len(a) == 20
    assert set(load_task("rte", 10, mirror)["instance_id"]) <= set(a["instance_id"])
    assert len(load_task("wnli", 300, mirror)) == 71  # all rows when fewer than n
    assert set(a["gold"]) <= set(get_task("rte").labels)
    assert (a["gold"] == [get_task("rte").labels[i] for i in a["label"]]).all()


# ------------------------------------------------------------------------------------------ an 11th task
TOY_ROWS = [{"text": f"review number {i}", "label": i % 2, "idx": 100 + i} for i in range(12)]


@pytest.fixture()
def toy(tmp_path):
    """A toy task registered with its rows in a temporary mirror (the one change adding a task needs), then removed."""
    mirror = tmp_path / "mirror"
    folder = mirror / "hf" / "nyu-mll__glue" / "toy"
    folder.mkdir(parents=True)
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TOY_ROWS))
    task = registry.register(EvalTask("toy", (("glue", "toy", "validation"),), ("sad", "glad"), "Text: {text}",
                                      "sentiment", (("glad", 1), ("sad", 0), ("yes", 1))))
    yield task, mirror
    registry.unregister("toy")
    assert "toy" not in TASKS




def test_a_registered_task_runs_through_every_stage(toy, tiny_dir, tmp_path):
    from coinlib.core.params import validate
    from coinlib.core.promptsets import load_prompt_set, select
    from coinlib.evaluate.runner import run_evaluation
    from coinlib.evaluate.scoring import parse_label
    from coinlib.perturb.tokens import protected_terms
    from coinlib.results.tables import task_categories

    task, mirror = toy
    # sampling: 8 of the 12 rows, the seed-0 permutation's first 8 positions (sorted)
    sample = load_task("toy", 8, mirror)
    assert sample["instance_id"].tolist() == ["100", "102", "103", "104", "105", "107", "109", "111"]
    assert sample["content"].iat[1] == "Text: review number 2" and sample["gold"].iat[5] == "glad"
    # prompt selection, with the prompt set's own instructions for the new task
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump({"clean": {"toy": ["Sad or glad? ", "Mood: "], "sst2": ["Sentiment: "]}}))
    assert select(load_prompt_set(path), ["clean"], ["toy"], 1) == {"clean": {"toy": ["Sad or glad? "]}}
    # label parsing from the registry entry, perturbation protection, and the default task list
    assert [parse_label(x, task) for x in ("Glad!", "yes.", "sadly", "no")] == ["glad", "glad", "sad", ""]
    assert {"sad", "glad"} <= protected_terms("toy")
    P = validate({"run": {"name": "toy", "output_root": str(tmp_path / "runs"), "mirror": str(mirror)},
                  "model": {"name": str(tiny_dir)},
                  "evaluate": {"tasks": ["toy"], "n_per_task": 8, "prompt_set": str(path), "groups": ["clean"],
                               "scoring": "rank", "adapters": []}})
    assert "toy" in validate({"base": None, "run": {"name": "x"}, "model": {"name": "m"}}).evaluate.tasks
    # scoring: the whole evaluation on a tiny model, then the Table 1 category
    tables = run_evaluation(P, rank=0, world_size=1)
    preds = tables.predictions
    assert len(preds) == 2 * 8 and set(preds["prediction"]) <= {"sad", "glad"}
    assert all(set(json.loads(s)) == {"sad", "glad"} for s in preds["label_scores"])
    assert (preds["gold"] == preds["instance_id"].map(lambda i: ("sad", "glad")[int(i) % 2])).all()
    cats = task_categories(tables.summary.assign(model="tiny"))
    assert cats["category"].tolist() == ["sentiment"] and cats["tasks"].tolist() == ["toy"]
