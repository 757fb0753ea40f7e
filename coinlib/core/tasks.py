"""The 10 GLUE evaluation tasks: label words, content formats and validation rows (paper section 4.3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from coinlib.core.sampling import EVAL_SAMPLE_SEED, eval_split, sample_indices
from coinlib.core.sources import load_split


@dataclass(frozen=True)
class GlueTask:
    """One evaluation task: where its validation rows live and how an instance becomes text."""

    name: str
    labels: tuple[str, ...]  # label word per label id
    content: Callable[[dict], str]

    def label_word(self, label_id: int) -> str:
        return self.labels[label_id]


def _sentence(r: dict) -> str:
    return r["sentence"]


def _pair(first: str, second: str, a: str, b: str) -> Callable[[dict], str]:
    def fmt(r: dict) -> str:
        return f"{first}: {r[a]} {second}: {r[b]}"

    return fmt


_NLI3 = ("entailment", "neutral", "contradiction")
_MNLI = _pair("Premise", "Hypothesis", "premise", "hypothesis")
_SENTS = _pair("Sentence 1", "Sentence 2", "sentence1", "sentence2")

TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", ("unacceptable", "acceptable"), _sentence),
    GlueTask("mnli", _NLI3, _MNLI),
    GlueTask("mnli_matched", _NLI3, _MNLI),
    GlueTask("mnli_mismatched", _NLI3, _MNLI),
    GlueTask("mrpc", ("not_equivalent", "equivalent"), _SENTS),
    GlueTask("qnli", ("entailment", "not_entailment"), _pair("Question", "Context", "question", "sentence")),
    GlueTask("qqp", ("not_equivalent", "equivalent"), _pair("Question 1", "Question 2", "question1", "question2")),
    GlueTask("rte", ("entailment", "not_entailment"), _SENTS),
    GlueTask("sst2", ("negative", "positive"), _sentence),
    GlueTask("wnli", ("not_entailment", "entailment"), _SENTS),
]}


def get_task(name: str) -> GlueTask:
    """The task spec; a clear error for unknown names."""
    if name not in TASKS:
        raise KeyError(f"unknown evaluation task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_task(name: str, n: int | None = None, mirror: str | os.PathLike | None = "auto") -> pd.DataFrame:
    """Validation rows of a task as ``instance_id, content, label, gold`` (gold = label word).

    ``n`` selects the shared deterministic evaluation sample (:mod:`coinlib.core.sampling`): the same rows for every
    prompt, group and model; ``None`` keeps all rows. The split is the one :func:`coinlib.core.sampling.eval_split`
    names (MNLI: the matched validation set).
    """
    task = get_task(name)
    dataset, config, split = eval_split(name)
    data = load_split(dataset, config, split, mirror)
    if n is not None:
        data = data.select(sample_indices(len(data), n, EVAL_SAMPLE_SEED))
    rows = data.to_list()
    return pd.DataFrame({
        "instance_id": [str(r["idx"]) for r in rows],
        "content": [task.content(r) for r in rows],
        "label": [int(r["label"]) for r in rows],
        "gold": [task.label_word(int(r["label"])) for r in rows],
    })
