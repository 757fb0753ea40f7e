"""Greedy attack (PromptBench style): walk the words by importance, try a few character or word
candidates for each, keep the one that lowers the score most, stop at ``budget`` changed words.

``score`` is any ``instruction -> float`` the attacker wants low (accuracy on a labelled sample; see
:func:`coinlib.perturb.importance.label_scorer`), so the search is testable with a plain callable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from coinlib.perturb import character, word
from coinlib.perturb.importance import Scorer
from coinlib.perturb.synonyms import SynonymSource, default_synonyms
from coinlib.perturb.tokens import Token, edit_plan, render

ATTACK_LEVELS = ("character", "word")


@dataclass
class AttackResult:
    """The kept variant, its score, the clean score and the edits made (token index, old word, new word)."""

    text: str
    score: float
    clean_score: float
    edits: list[tuple[int, str, str]] = field(default_factory=list)
    evaluations: int = 0


def greedy_attack(
    text: str,
    score: Scorer,
    level: str = "character",
    budget: int = 4,
    seed: int = 0,
    task: str | None = None,
    protected: Iterable[str] | None = None,
    order: Sequence[int] | None = None,
    n_candidates: int = 4,
    synonyms: SynonymSource | None = None,
) -> AttackResult:
    """Greedy search for the variant of ``text`` with the lowest ``score`` changing at most ``budget`` words.

    A word's best candidate is kept only when it lowers the score below the current one (PromptBench's rule),
    so the result never scores worse than the clean text.
    """
    if level not in ATTACK_LEVELS:
        raise ValueError(f"attack level must be one of {ATTACK_LEVELS}, got {level!r}")
    tokens, order, prot = edit_plan(text, seed, task, protected, order, budget)
    if level == "word":
        synonyms = synonyms or default_synonyms()
    rng = random.Random(f"attack:{level}:{seed}")
    current = list(tokens)
    best = clean = score(text)
    result = AttackResult(text, clean, clean, evaluations=1)
    for i in order:
        if len(result.edits) == budget:
            break
        old = tokens[i].text
        cands = (character.word_candidates(old, rng, n_candidates) if level == "character"
                 else word.word_candidates(old, synonyms, n_candidates, prot))
        trials = [(score(render(current[:i] + [Token(c, "word")] + current[i + 1:])), c) for c in cands]
        result.evaluations += len(trials)
        if trials and min(trials)[0] < best:
            best, new = min(trials)
            current[i] = Token(new, "word")
            result.edits.append((i, old, new))
    result.text, result.score = render(current), best
    return result
