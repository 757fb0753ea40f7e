"""Word level (TextFooler-style): replace up to ``budget`` of the most important words by near-synonyms,
keeping the inflection of each word and, when the source can measure it, the similarity of the whole text."""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from coinlib.perturb.synonyms import SynonymSource, default_synonyms
from coinlib.perturb.tokens import Token, edit_plan, match_case, render


def word_candidates(word: str, synonyms: SynonymSource, n: int = 4, protected: Iterable[str] = ()) -> list[str]:
    """Up to ``n`` replacements for ``word``, in its capitalisation; never a ``protected`` word (a label)."""
    prot = {w.lower() for w in protected}
    return [match_case(word, c) for c in synonyms(word, n) if c.lower() not in prot]


def perturb_words(text: str, seed: int = 0, budget: int = 4, task: str | None = None,
                  protected: Iterable[str] | None = None, order: Sequence[int] | None = None,
                  synonyms: SynonymSource | None = None, top_k: int = 2, n_candidates: int = 8,
                  min_similarity: float = 0.85) -> str:
    """TextFooler-style variant of ``text``.

    Walks ``order`` (token indices, most important first; default a seeded random order) and replaces each
    word by one of its ``n_candidates`` near-synonyms, until ``budget`` words are replaced. When ``synonyms``
    has a ``similarities`` method (the default offline MiniLM source has), candidates are ranked by the
    similarity of the changed text to the source, those below ``min_similarity`` are dropped, and a seeded
    pick among the best ``top_k`` is kept; otherwise the pick is among the first ``top_k`` synonyms. Words
    without an acceptable synonym are skipped, so fewer than ``budget`` words may change.
    """
    tokens, order, prot = edit_plan(text, seed, task, protected, order, budget)
    synonyms = synonyms or default_synonyms()
    similarities = getattr(synonyms, "similarities", None)
    rng = random.Random(f"word:{seed}")
    out, changed = list(tokens), 0
    for i in order:
        if changed == budget:
            break
        trials = [out[:i] + [Token(c, "word")] + out[i + 1:] for c in word_candidates(tokens[i].text, synonyms,
                                                                                      n_candidates, prot)]
        if similarities is not None and trials:
            sims = similarities(text, [render(t) for t in trials])
            trials = [t for s, t in sorted(zip(sims, trials), key=lambda st: -st[0]) if s >= min_similarity]
        if trials:
            out, changed = rng.choice(trials[:top_k]), changed + 1
    return render(out)
