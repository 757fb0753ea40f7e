"""Perturbed instructions as extra training positives (the paper's limitation section asks for it).

For an entry rendered with template t, the extra positive renders the same instance with t *perturbed*: the
template text is changed at the given level before rendering, so only the instruction changes, never the
instance. FLAN placeholders (``{premise}``, ``{options_}``), the instance's answer options and the
answer-format words are protected. An extra row keeps every column of its entry, with
``pos_template_id == template_id`` (a regular positive always uses another template) and ``pos_prompt`` the
perturbed rendering. Rows follow their entry; an entry and the next one that are each other's hard negatives
(:func:`coinlib.data.pairs.build_entries` emits such pairs) share one perturbed template, and their extra
rows follow the pair as a pair, so the data stays in pairs of mutual hard negatives. ``entry_id`` is
renumbered in order.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from coinlib.core.groups import LEVELS
from coinlib.data.flan import TaskPool, render
from coinlib.perturb import perturb_instruction, protected_terms
from coinlib.perturb.promptset import variant_seed



def add_perturbed_positives(entries: list[dict[str, Any]], pools: Iterable[TaskPool], levels: Iterable[str],
                            seed: int = 0, budget: int = 2, **options) -> list[dict[str, Any]]:
    """``entries`` with, after each one, one extra row per level whose positive is the perturbed template.

    ``options`` go to :func:`coinlib.perturb.perturb_instruction` (e.g. ``synonyms=``, ``generate=``). A level
    that leaves a template unchanged adds no row for that entry.
    """
    levels = list(levels)
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise ValueError(f"unknown perturbation levels {bad}; choose from {LEVELS}")
    if not levels:
        return entries
    by_task = {p.name: p for p in pools}
    examples = {name: {e.instance_id: e for e in p.examples} for name, p in by_task.items()}
    templates = {name: {t.template_id: t for t in p.templates} for name, p in by_task.items()}
    out: list[dict[str, Any]] = []
    k = 0
    while k < len(entries):
        group = entries[k:k + 2] if _mutual(entries[k:k + 2]) else entries[k:k + 1]
        k += len(group)
        out.extend(group)
        first = group[0]
        task = first["task"]
        template = templates[task][first["template_id"]]
        option_words = {w for e in group for o in examples[task][e["instance_id"]].options
                        for w in re.findall(r"[A-Za-z]+(?:_[A-Za-z]+)*", o)}
        protected = protected_terms(None, option_words)
        for n, level in enumerate(levels):
            text = perturb_instruction(template.input, level, seed=variant_seed(seed, task, 31 * first["entry_id"] + n),
                                       protected=protected, budget=budget, **options)
            if text == template.input:
                continue
            for e in group:
                prompt = render(text, examples[task][e["instance_id"]].fields,
                                f"task {task} template {template.template_id} ({level})")
                out.append({**e, "pos_template_id": e["template_id"], "pos_prompt": prompt})
    return [{**e, "entry_id": i} for i, e in enumerate(out)]


def _mutual(group: list[dict[str, Any]]) -> bool:
    """Whether two entries are each other's hard negatives (same task and template, swapped instances)."""
    if len(group) != 2:
        return False
    a, b = group
    return (a["task"] == b["task"] and a["template_id"] == b["template_id"]
            and a["neg_prompt"] == b["prompt"] and b["neg_prompt"] == a["prompt"])
