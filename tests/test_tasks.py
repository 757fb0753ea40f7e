"""GLUE evaluation tasks: content formats and label words as in the paper's code; the shared fixed-seed sample."""

from __future__ import annotations

import pytest

from coinlib.core.params import GLUE_TASKS
from coinlib.core.tasks import TASKS, get_task, load_task


def test_every_glue_task_is_defined():
    assert sorted(TASKS) == sorted(GLUE_TASKS)
    with pytest.raises(KeyError, match="unknown evaluation task 'stsb'"):
        get_task("stsb")


@pytest.mark.parametrize("task, row, text", [
    ("sst2", {"sentence": "good ."}, "good ."),
    ("qqp", {"question1": "A?", "question2": "B?"}, "Question 1: A? Question 2: B?"),
    ("mnli_mismatched", {"premise": "P", "hypothesis": "H"}, "Premise: P Hypothesis: H"),
    ("qnli", {"question": "Q", "sentence": "C"}, "Question: Q Context: C"),
    ("wnli", {"sentence1": "S1", "sentence2": "S2"}, "Sentence 1: S1 Sentence 2: S2"),
])
def test_content_formats(task, row, text):
    assert get_task(task).content(row) == text


def test_label_words_follow_label_ids():
    assert get_task("rte").labels == ("entailment", "not_entailment")
    assert get_task("wnli").labels == ("not_entailment", "entailment")  # WNLI's ids are the other way round
    assert get_task("qqp").labels == ("not_equivalent", "equivalent")
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")


def test_sample_is_deterministic_nested_and_capped(mirror):
    a, b = load_task("rte", 20, mirror), load_task("rte", 20, mirror)
    assert a.equals(b)
    assert a["instance_id"].is_unique and len(a) == 20
    assert set(load_task("rte", 10, mirror)["instance_id"]) <= set(a["instance_id"])
    assert len(load_task("wnli", 300, mirror)) == 71  # all rows when fewer than n
    assert set(a["gold"]) <= set(get_task("rte").labels)
    assert (a["gold"] == [get_task("rte").labels[i] for i in a["label"]]).all()
