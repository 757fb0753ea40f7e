"""Instruction variants at four levels, for evaluation sets and as extra training positives.

    character  DeepWordBug-style letter swaps/substitutions/deletions/insertions      (group deepwordbug)
    word       TextFooler-style near-synonym replacement, offline MiniLM neighbours   (group textfooler)
    sentence   CheckList random 10-character alphanumeric suffix                      (group checklist)
    stresstest StressTest tautology suffix ("and true is true")                       (group stresstest)
    semantic   rephrase by an instruction model, rejecting outputs that drop labels   (group semantic)

Label words, placeholders, quoted spans and answer-format words are never changed (:mod:`.tokens`).
Every function is deterministic for its seed.
"""

from __future__ import annotations

from typing import Iterable

from coinlib.core.groups import GROUP_OF, LEVELS
from coinlib.perturb.character import perturb_characters
from coinlib.perturb.semantic import RephraseRejected, rephrase
from coinlib.perturb.sentence import checklist_suffix, stresstest_suffix
from coinlib.perturb.tokens import protected_terms
from coinlib.perturb.word import perturb_words


__all__ = ["LEVELS", "GROUP_OF", "perturb_instruction", "protected_terms", "perturb_characters",
           "perturb_words", "checklist_suffix", "stresstest_suffix", "rephrase", "RephraseRejected"]


def perturb_instruction(text: str, level: str, seed: int = 0, protected: Iterable[str] | None = None,
                        task: str | None = None, budget: int = 4, **options) -> str:
    """One variant of ``text`` at ``level`` (see :data:`LEVELS`), deterministic for ``seed``.

    ``protected``: words never changed (default: the label words of ``task``, every GLUE task's when None,
    plus the answer-format words). ``budget``: words changed at the character and word levels. Other
    ``options`` go to the level's function (``synonyms=``, ``order=``, ``generate=``, ...). The semantic level
    raises :class:`RephraseRejected` when no sample keeps the required terms.
    """
    if level == "character":
        return perturb_characters(text, seed=seed, budget=budget, task=task, protected=protected, **options)
    if level == "word":
        return perturb_words(text, seed=seed, budget=budget, task=task, protected=protected, **options)
    if level == "sentence":
        return checklist_suffix(text, seed=seed, **options)
    if level == "stresstest":
        return stresstest_suffix(text, seed=seed, **options)
    if level == "semantic":
        return rephrase(text, seed=seed, task=task, protected=protected, **options)
    raise ValueError(f"unknown perturbation level {level!r}; choose from {LEVELS}")
