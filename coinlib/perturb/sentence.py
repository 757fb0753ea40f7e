"""Sentence level: a distracting suffix after the instruction's last word.

CheckList (as the paper's fixed set does it): a seeded random string of 10 letters and digits.
StressTest: tautologies such as "and true is true", which add length without meaning.
The suffix goes before the instruction's trailing punctuation and spaces (``... 'negative' X: `` stays
``... 'negative' <suffix>: ``) and any trailing placeholders (a FLAN template's ``{options_}``), so
whatever follows the instruction is unchanged.
"""

from __future__ import annotations

import random
import re
import string

TAUTOLOGIES = ("and true is true", "and false is not true")
_TAIL_RE = re.compile(r"(?:[\s:.!?;,]|\{[^{}\n]*\})*$")
_PUNCT_TAIL_RE = re.compile(r"[\s:.!?;,]*$")


def split_tail(text: str, placeholders: bool = True) -> tuple[str, str]:
    """``(body, tail)`` where ``tail`` is the trailing punctuation and whitespace, and trailing placeholders
    (``{options_}``) unless ``placeholders`` is False."""
    m = (_TAIL_RE if placeholders else _PUNCT_TAIL_RE).search(text)
    return text[: m.start()], text[m.start():]


def insert_suffix(text: str, suffix: str) -> str:
    """``text`` with ``suffix`` after its last word and before its trailing punctuation."""
    body, tail = split_tail(text)
    return f"{body} {suffix}{tail}"


def random_string(seed: int | str, length: int = 10) -> str:
    """A seeded random string of ASCII letters and digits."""
    rng = random.Random(f"checklist:{seed}")
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def checklist_suffix(text: str, seed: int | str = 0, length: int = 10) -> str:
    """CheckList variant: a random ``length``-character alphanumeric string inserted at the end."""
    return insert_suffix(text, random_string(seed, length))


def stresstest_suffix(text: str, seed: int | str = 0, repeats: int = 1) -> str:
    """StressTest variant: ``repeats`` seeded tautologies (``and true is true``) inserted at the end."""
    rng = random.Random(f"stresstest:{seed}")
    return insert_suffix(text, " ".join(rng.choice(TAUTOLOGIES) for _ in range(repeats)))
