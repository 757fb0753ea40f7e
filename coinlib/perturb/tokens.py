"""Split an instruction into tokens and decide which words a perturbation may touch.

Protected, never changed by any level: the label words of the task (every registered evaluation task's when no
task is given; :mod:`coinlib.core.tasks`), placeholders such as ``{content}``, quoted spans (``'positive'``),
answer-format words (``answer``, ``respond``, ``or``, ...) and the response marker. Joining the tokens gives back
the text exactly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from coinlib.core.formats import RESPONSE_HEADER
from coinlib.core.tasks import label_words

#: Words that state the answer format; changing them changes what the model is asked to output.
FORMAT_WORDS: frozenset[str] = frozenset(
    {"answer", "answers", "respond", "responding", "response", "reply", "output", "label", "labels",
     "option", "options", "either", "or", "yes", "no", "true", "false", "not"}
)

#: Function words: never chosen for an edit (they carry no task meaning, and editing them rarely makes sense).
STOPWORDS: frozenset[str] = frozenset(
    """a an the and of to in on at by for from with as is are be been being was were it its this that these
    those if then than so such your you me my we our they their them he she his her i do does did can could
    would should will shall may might must have has had which who whom what when where why how into about
    between both each any all some one two""".split()
)

# Order matters: placeholders and quoted spans are atomic; words may hold underscores (not_equivalent).
_TOKEN_RE = re.compile(
    r"(?P<placeholder>\{[^{}\n]*\})"
    r"|(?P<quoted>(?<![A-Za-z0-9])(?:'[^'\n]{1,60}'|\"[^\"\n]{1,60}\")(?![A-Za-z0-9]))"
    r"|(?P<marker>" + r"\s*".join(map(re.escape, RESPONSE_HEADER.rstrip(":").split())) + ":?)"  # "### Response:"
    r"|(?P<word>[A-Za-z]+(?:_[A-Za-z]+)*)"
    r"|(?P<other>\s+|[^A-Za-z\s])"
)


@dataclass(frozen=True)
class Token:
    """A piece of an instruction. ``kind`` is ``word`` (may be edited), ``protected`` or ``other``."""

    text: str
    kind: str


def protected_terms(task: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Lower-cased words never changed for ``task``: its label words (every task's if None), the answer-format
    words and ``extra``. Label words with an underscore also protect their parts (``not``, ``equivalent``)."""
    labels = label_words(task)  # the registry's (coinlib.core.tasks); a clear error for unknown tasks
    terms = {w.lower() for w in labels} | {p for w in labels for p in w.lower().split("_")}
    return frozenset(terms | FORMAT_WORDS | {w.lower() for w in extra})


def resolve_protected(task: str | None = None, protected: Iterable[str] | None = None) -> frozenset[str]:
    """``protected`` as given (lower-cased), else :func:`protected_terms` of ``task``."""
    return protected_terms(task) if protected is None else frozenset(w.lower() for w in protected)


def tokenize(text: str, protected: Iterable[str] = ()) -> list[Token]:
    """Tokens of ``text`` (``"".join`` gives it back). Words in ``protected`` (any case) become ``protected``."""
    prot = {w.lower() for w in protected}
    tokens = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "word":
            kind = "protected" if m.group().lower() in prot else "word"
        elif kind in ("placeholder", "quoted", "marker"):
            kind = "protected"
        tokens.append(Token(m.group(), kind))
    if "".join(t.text for t in tokens) != text:  # the regex covers every character; this guards edits to it
        raise AssertionError("tokenizer lost characters")
    return tokens


def render(tokens: Sequence[Token]) -> str:
    """Text of a token list."""
    return "".join(t.text for t in tokens)


def editable_positions(tokens: Sequence[Token], min_len: int = 3) -> list[int]:
    """Indices of words a perturbation may change: not protected, not a stopword, at least ``min_len`` letters."""
    return [
        i for i, t in enumerate(tokens)
        if t.kind == "word" and len(t.text) >= min_len and t.text.lower() not in STOPWORDS
    ]


def protected_spans(text: str, protected: Iterable[str] = ()) -> list[str]:
    """The protected pieces of ``text`` in order (what every variant must keep verbatim)."""
    return [t.text for t in tokenize(text, protected) if t.kind == "protected"]


def random_order(positions: Sequence[int], seed: int | str) -> list[int]:
    """``positions`` shuffled by a seed (the random word importance)."""
    order = list(positions)
    random.Random(seed).shuffle(order)
    return order


def edit_plan(text: str, seed: int | str, task: str | None = None, protected: Iterable[str] | None = None,
              order: Sequence[int] | None = None, budget: int = 1) -> tuple[list[Token], list[int], frozenset[str]]:
    """``(tokens, order, protected)`` for a word-by-word perturbation: ``order`` keeps the editable indices of
    the given order (most important first), or is a seeded random order of them when None."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 word, got {budget}")
    prot = resolve_protected(task, protected)
    tokens = tokenize(text, prot)
    editable = editable_positions(tokens)
    if order is None:
        return tokens, random_order(editable, f"order:{seed}"), prot
    return tokens, [i for i in order if i in set(editable)], prot


def match_case(template: str, word: str) -> str:
    """``word`` with the capitalisation pattern of ``template`` (lower, Title or UPPER)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word
