"""The evaluation task registry and the shared evaluation sample (paper section 4.3).

:data:`TASKS` is the one place that knows an evaluation task: where its rows live (dataset, config and split(s)),
how a row becomes text, its label words, the answers the paper's scoring accepts for each label, the task whose
instructions a prompt set lends it, and its Table 1 category. Parameters (default task list), prompt sets
(aliases), the data build (evaluation holdout), perturbations (protected label words), scoring (label parsing)
and the tables (categories) all read it, so adding a task is one :func:`register` call (or one entry below).

The sample: every prompt, group and model is evaluated on the same rows, the first ``n`` positions of a fixed
permutation (seed :data:`EVAL_SAMPLE_SEED`) of the task's rows; samples are nested (the sample of ``n`` rows is in
the sample of any ``m >= n`` rows). A task with several splits samples their concatenation, in the listed order.
Training pools that can only come from an evaluated split (QNLI, MNLI, QQP in the offline mirror) exclude every
row that the sample of ``P.data.eval_holdout`` rows of any task uses (:func:`held_out_rows`), so an evaluation with
``n_per_task <= eval_holdout`` is disjoint from training.

``evaluate.sample: reference`` swaps the shared sample for the paper's code's own draw
(:func:`reference_sample_indices`): ``random.sample`` with seed 42 over the split's rows in hub order, kept in
draw order. Training then holds out that sample instead (``sample="reference"`` below), which needs
``data.eval_holdout == evaluate.n_per_task`` because draws of different sizes need not be nested.
"""

from __future__ import annotations

import hashlib
import os
import random
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from coinlib.core.sources import load_split

#: Seed of the evaluation sample; the same for every run, so every model sees the same instances.
EVAL_SAMPLE_SEED = 0

#: Seed of the reference code's sample: luka-group/CoIN run_contrastive_llama.py seeds Python's ``random`` with
#: its ``--seed`` (default 42, utils/common_utils.py ``seed_all``) before any evaluation row is drawn.
REFERENCE_SAMPLE_SEED = 42

#: The evaluation samples ``evaluate.sample`` names: ``shared`` (:func:`sample_indices`, nested, sorted) and
#: ``reference`` (:func:`reference_sample_indices`, the paper's code's instances in its order).
SAMPLES: tuple[str, ...] = ("shared", "reference")

#: Table 1 (categories of Table 5): category key -> label, in the tables' order.
CATEGORIES: dict[str, str] = {
    "sentiment": "Sentiment Analysis",
    "grammar": "Grammar Correctness",
    "paraphrase": "Paraphrase Identification",
    "nli": "Natural Language Inference",
}

Split = tuple[str, str, str]  # (dataset key of coinlib.core.sources.DATASETS, config, split)


@dataclass(frozen=True)
class EvalTask:
    """One evaluation task.

    ``answers`` are the lowercased answer texts the paper's generate-mode scoring accepts, each with the label id
    it stands for, in the order it tries them (the first one the cleaned answer starts with wins). By default each
    label word accepts itself.
    """

    name: str
    splits: tuple[Split, ...]  # concatenated in this order
    labels: tuple[str, ...]  # label word per label id
    content_format: str  # str.format over a row's fields
    category: str | None = None  # key of CATEGORIES, None = outside Table 1
    answers: tuple[tuple[str, int], ...] = ()
    prompts_from: str | None = None  # task whose instructions a prompt set lends when it has none for this one
    id_field: str = "idx"

    def __post_init__(self):
        problems = []
        if not self.splits:
            problems.append("splits is empty")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            problems.append(f"labels must be >= 2 distinct words, got {self.labels}")
        fields = [f for _, f, _, _ in string.Formatter().parse(self.content_format) if f]
        if not fields:
            problems.append(f"content_format {self.content_format!r} names no row field")
        if self.category is not None and self.category not in CATEGORIES:
            problems.append(f"category {self.category!r} is not one of {list(CATEGORIES)} (or None)")
        bad = [a for a in self.answers if not (a[0] == a[0].lower() and a[0] and 0 <= a[1] < len(self.labels))]
        if bad:
            problems.append(f"answers {bad} must be non-empty lowercase texts with a label id < {len(self.labels)}")
        if problems:
            raise ValueError(f"evaluation task {self.name!r}: " + "; ".join(problems))
        if not self.answers:
            object.__setattr__(self, "answers", tuple((w.lower(), i) for i, w in enumerate(self.labels)))

    def content(self, row: dict) -> str:
        """The instance text the instruction is followed by (the paper's per-task format)."""
        return self.content_format.format(**row)

    def label_word(self, label_id: int) -> str:
        return self.labels[label_id]

    @property
    def digest(self) -> str:
        """Short hash of everything that decides this task's predictions (rows, text, labels, accepted answers)."""
        key = repr((self.splits, self.labels, self.content_format, self.answers, self.id_field))
        return hashlib.sha256(key.encode()).hexdigest()[:8]

    @property
    def accepted(self) -> tuple[tuple[str, str], ...]:
        """``answers`` with label words instead of ids: ``(answer text, label word)`` in matching order."""
        return tuple((text, self.labels[i]) for text, i in self.answers)


def _glue(config: str, split: str = "validation") -> Split:
    return ("glue", config, split)


_NLI3 = ("entailment", "neutral", "contradiction")
_PREMISE = "Premise: {premise} Hypothesis: {hypothesis}"
_SENTENCES = "Sentence 1: {sentence1} Sentence 2: {sentence2}"
# The paper's scoring (luka-group/CoIN, promptbench/config.py LABEL_SET / LABEL_TO_ID): SST-2, QNLI, RTE and WNLI
# also accept the digits of the label ids; its quoted variants ("positive'") never match first, so they are left out.
_DIGITS = (("0", 0), ("1", 1))
_ENTAIL = (("entailment", 0), ("not_entailment", 1), *_DIGITS)
_EQUIV = (("equivalent", 1), ("not_equivalent", 0))

#: The registry: task name -> task. The paper's ten GLUE validation sets are built in.
TASKS: dict[str, EvalTask] = {t.name: t for t in [
    EvalTask("cola", (_glue("cola"),), ("unacceptable", "acceptable"), "{sentence}", "grammar",
             (("unacceptable", 0), ("acceptable", 1))),
    # The reference draws "mnli" from validation_matched and validation_mismatched together; the GLUE configs
    # mnli_matched / mnli_mismatched hold exactly those rows (one split each), so the holdout sees one copy of them.
    EvalTask("mnli", (_glue("mnli_matched"), _glue("mnli_mismatched")), _NLI3, _PREMISE, "nli"),
    EvalTask("mnli_matched", (_glue("mnli_matched"),), _NLI3, _PREMISE, "nli", prompts_from="mnli"),
    EvalTask("mnli_mismatched", (_glue("mnli_mismatched"),), _NLI3, _PREMISE, "nli", prompts_from="mnli"),
    EvalTask("mrpc", (_glue("mrpc"),), ("not_equivalent", "equivalent"), _SENTENCES, "paraphrase", _EQUIV),
    EvalTask("qnli", (_glue("qnli"),), ("entailment", "not_entailment"), "Question: {question} Context: {sentence}",
             "nli", _ENTAIL),
    EvalTask("qqp", (_glue("qqp"),), ("not_equivalent", "equivalent"),
             "Question 1: {question1} Question 2: {question2}", "paraphrase", _EQUIV),
    EvalTask("rte", (_glue("rte"),), ("entailment", "not_entailment"), _SENTENCES, "nli", _ENTAIL),
    EvalTask("sst2", (_glue("sst2"),), ("negative", "positive"), "{sentence}", "sentiment",
             (("positive", 1), ("negative", 0), *_DIGITS)),
    # WNLI's label ids are the other way round: 1 = entailment (and the reference's "1" means entailment too).
    EvalTask("wnli", (_glue("wnli"),), ("not_entailment", "entailment"), _SENTENCES, "nli",
             (("entailment", 1), ("not_entailment", 0), *_DIGITS)),
]}

#: The paper's evaluation tasks (the built-in entries), in the tables' order.
GLUE_TASKS: tuple[str, ...] = tuple(TASKS)


def register(task: EvalTask, replace: bool = False) -> EvalTask:
    """Add ``task`` to the registry (every stage sees it from then on); ``replace`` to redefine a name."""
    if task.name in TASKS and not replace:
        raise ValueError(f"evaluation task {task.name!r} is already registered; pass replace=True to redefine it")
    if task.prompts_from is not None and task.prompts_from not in TASKS:
        raise ValueError(f"task {task.name!r}: prompts_from {task.prompts_from!r} is not a registered task")
    TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a registered task (a clear error for unknown names)."""
    get_task(name)
    del TASKS[name]


def get_task(name: str) -> EvalTask:
    """The registered task; a clear error for unknown names."""
    if name not in TASKS:
        raise KeyError(f"unknown evaluation task {name!r}; known: {', '.join(sorted(TASKS))}. "
                       "Fix: use one of those, or register it (coinlib.core.tasks.register)")
    return TASKS[name]


def task_names() -> list[str]:
    """Every registered task, in registration order."""
    return list(TASKS)


def category_of(task: str) -> str | None:
    """Table 1 category key of a task; None for an unregistered task or one outside the categories."""
    return TASKS[task].category if task in TASKS else None


def category_tasks(category: str) -> list[str]:
    """Registered tasks of a category, in registry order."""
    return [t.name for t in TASKS.values() if t.category == category]


def prompt_aliases() -> dict[str, str]:
    """Task -> the task whose instructions it uses when a prompt set has none of its own."""
    return {t.name: t.prompts_from for t in TASKS.values() if t.prompts_from}


def label_words(task: str | None = None) -> tuple[str, ...]:
    """Label words of ``task``, or of every registered task (each word once) when None."""
    if task is not None:
        return get_task(task).labels
    return tuple(dict.fromkeys(w for t in TASKS.values() for w in t.labels))


# ------------------------------------------------------------------------------------------------ the sample
def sample_indices(n_rows: int, n: int, seed: int = EVAL_SAMPLE_SEED) -> list[int]:
    """Sorted row positions of a deterministic sample of ``n`` of ``n_rows`` rows (all rows when ``n >= n_rows``).

    The sample is the first ``n`` entries of ``numpy.random.default_rng(seed).permutation(n_rows)``, so
    smaller samples are subsets of larger ones for the same seed and ``n_rows``.
    """
    if n_rows < 0 or n < 0:
        raise ValueError(f"sample_indices: n_rows and n must be >= 0, got n_rows={n_rows}, n={n}")
    if n >= n_rows:
        return list(range(n_rows))
    perm = np.random.default_rng(seed).permutation(n_rows)
    return sorted(int(i) for i in perm[:n])


def reference_sample_indices(n_rows: int, n: int, seed: int = REFERENCE_SAMPLE_SEED, draw: int = 1) -> list[int]:
    """Row positions the paper's code evaluates for a split of ``n_rows`` rows, in its order (not sorted).

    The reference (luka-group/CoIN) seeds Python's ``random`` once per process, ``seed_all(42)`` at the start of
    ``run_contrastive_llama.py`` ``main()``, and each dataset construction (``promptbench/dataload.py``,
    ``GLUE.__init__``) then draws ``random.sample(range(len(data)), min(task_to_cnt[task], sample_cnt))`` over the
    validation split in hub order (MNLI: validation_matched then validation_mismatched) and ``select``s the rows in
    that order. ``task_to_cnt`` holds the hub's split sizes, so ``k = min(n, n_rows)`` is the same number when the
    split is complete. ``draw`` is the draw's place in the process's stream: 1 for the first dataset the process
    builds (one task with one perturbation method, or the clean group of ``--perturb_method all``, whose methods
    clean, deepwordbug, textfooler, checklist, semantic draw 1..5 for the same task). A private
    ``random.Random(seed)`` gives the same numbers as the reference's seeded global ``random`` without touching it.
    """
    if n_rows < 0 or n < 0 or draw < 1:
        raise ValueError(f"reference_sample_indices: n_rows and n must be >= 0 and draw >= 1, "
                         f"got n_rows={n_rows}, n={n}, draw={draw}")
    rng, k = random.Random(seed), min(n, n_rows)
    for _ in range(draw - 1):
        rng.sample(range(n_rows), k)
    return rng.sample(range(n_rows), k)


def _check_sample(sample: str) -> str:
    if sample not in SAMPLES:
        raise ValueError(f"unknown evaluation sample {sample!r}; known: {', '.join(SAMPLES)}")
    return sample


def _split_length(split: Split, mirror) -> int:
    return len(load_split(*split, mirror))


def eval_sample(task: str, n: int, mirror: str | os.PathLike | None = "auto", seed: int | None = None,
                lengths: dict[Split, int] | None = None, sample: str = "shared") -> list[tuple[Split, int]]:
    """``(split, row position)`` of each row an evaluation of ``n`` instances of ``task`` uses, in sample order.

    Positions are drawn over the concatenation of the task's splits: ``sample="shared"`` with
    :func:`sample_indices` (sorted), ``"reference"`` with :func:`reference_sample_indices` (the paper's code's
    draw, in its order); ``seed`` defaults to that sample's seed. ``lengths`` gives known split lengths (the
    others are loaded).
    """
    reference = _check_sample(sample) == "reference"
    if seed is None:
        seed = REFERENCE_SAMPLE_SEED if reference else EVAL_SAMPLE_SEED
    spec = get_task(task)
    sizes = [(lengths or {}).get(s) for s in spec.splits]
    sizes = [size if size is not None else _split_length(s, mirror) for s, size in zip(spec.splits, sizes)]
    starts = np.cumsum([0, *sizes])
    out = []
    draw = reference_sample_indices if reference else sample_indices
    for pos in draw(int(starts[-1]), n, seed):
        part = int(np.searchsorted(starts, pos, side="right")) - 1
        out.append((spec.splits[part], pos - int(starts[part])))
    return out


def held_out_rows(split: Split, n: int, mirror: str | os.PathLike | None = "auto", n_rows: int | None = None,
                  seed: int | None = None, sample: str = "shared") -> set[int]:
    """Row positions of ``split`` that the ``sample`` of ``n`` rows of any registered task uses (empty if none)."""
    known = {split: n_rows} if n_rows is not None else {}
    return {pos for t in TASKS.values() if split in t.splits
            for part, pos in eval_sample(t.name, n, mirror, seed, known, sample) if part == split}


def load_task(name: str, n: int | None = None, mirror: str | os.PathLike | None = "auto",
              sample: str = "shared") -> pd.DataFrame:
    """Rows of a task's evaluation sample as ``instance_id, content, label, gold`` (gold = label word).

    Rows come in sample order. ``n`` selects the deterministic ``sample`` (:func:`eval_sample`: ``shared`` or ``reference``); ``None`` keeps
    all rows. Instance ids are the rows' ``idx``, prefixed with the config (``mnli_mismatched:12``) for a task of
    several splits.
    """
    task = get_task(name)
    data = {s: load_split(*s, mirror) for s in task.splits}
    if n is None:
        chosen = [(s, i) for s in task.splits for i in range(len(data[s]))]
    else:
        chosen = eval_sample(name, n, mirror, lengths={s: len(d) for s, d in data.items()}, sample=sample)
    # select keeps the order it is given, so taking each split's rows in turn follows the sample order
    picked = {s: iter(data[s].select([i for part, i in chosen if part == s]).to_list()) for s in task.splits}
    rows = [(s, next(picked[s])) for s, _ in chosen]
    prefix = len(task.splits) > 1
    return pd.DataFrame({
        "instance_id": [f"{s[1]}:{r[task.id_field]}" if prefix else str(r[task.id_field]) for s, r in rows],
        "content": [task.content(r) for _, r in rows],
        "label": [int(r["label"]) for _, r in rows],
        "gold": [task.label_word(int(r["label"])) for _, r in rows],
    })
