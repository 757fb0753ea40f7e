"""Character level (DeepWordBug-style): one swap, substitution, deletion or insertion in each of the most
important words, at most ``budget`` words. Words stay words (letters only), so the token structure is kept."""

from __future__ import annotations

import random
import string
from typing import Iterable, Sequence

from coinlib.perturb.tokens import Token, edit_plan, render

OPERATIONS = ("swap", "substitute", "delete", "insert")


def char_edit(word: str, op: str, rng: random.Random) -> str:
    """``word`` after one character operation (never equal to ``word``; at least 2 letters remain).

    ``swap`` exchanges two different adjacent letters (falls back to ``substitute`` when there are none).
    """
    if op not in OPERATIONS:
        raise ValueError(f"unknown character operation {op!r}; choose from {OPERATIONS}")
    letters = string.ascii_uppercase if word.isupper() else string.ascii_letters
    if op == "swap":
        pairs = [i for i in range(len(word) - 1) if word[i] != word[i + 1] and word[i] != "_" != word[i + 1]]
        if not pairs:
            return char_edit(word, "substitute", rng)
        i = rng.choice(pairs)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    positions = [i for i, c in enumerate(word) if c != "_"]
    if op == "delete":
        if len(positions) <= 2:
            return char_edit(word, "insert", rng)
        i = rng.choice(positions)
        return word[:i] + word[i + 1:]
    if op == "insert":
        i = rng.randrange(len(word) + 1)
        return word[:i] + rng.choice(letters) + word[i:]
    i = rng.choice(positions)
    return word[:i] + rng.choice([c for c in letters if c.lower() != word[i].lower()]) + word[i + 1:]


def word_candidates(word: str, rng: random.Random, n: int = 4) -> list[str]:
    """Up to ``n`` distinct one-operation variants of ``word`` (one per operation, then random ones)."""
    out: list[str] = []
    for attempt in range(4 * n):
        cand = char_edit(word, OPERATIONS[attempt % len(OPERATIONS)] if attempt < len(OPERATIONS)
                         else rng.choice(OPERATIONS), rng)
        if cand not in out:
            out.append(cand)
        if len(out) == n:
            break
    return out


def perturb_characters(text: str, seed: int = 0, budget: int = 4, task: str | None = None,
                       protected: Iterable[str] | None = None, order: Sequence[int] | None = None) -> str:
    """DeepWordBug-style variant of ``text``: one random character operation in each of the first ``budget``
    editable words of ``order`` (token indices, most important first; default a seeded random order)."""
    tokens, order, _ = edit_plan(text, seed, task, protected, order, budget)
    rng = random.Random(f"character:{seed}")
    out = list(tokens)
    for i in order[:budget]:
        out[i] = Token(char_edit(tokens[i].text, rng.choice(OPERATIONS), rng), "word")
    return render(out)
