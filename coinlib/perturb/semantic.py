"""Semantic level: the instruction rephrased by an instruction-following model.

The generator is a parameter (any ``(prompt, seed) -> text`` callable); :func:`model_rephraser` builds one
from a causal LM name (default the offline SmolLM2-135M-Instruct). An output is rejected, and another sample
drawn, when it is empty, repeats the source, drops a required term (a placeholder, a quoted span or a
label word of the source) or, given a sentence-similarity function, strays too far from the source.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from coinlib.perturb.sentence import split_tail
from coinlib.perturb.tokens import FORMAT_WORDS, resolve_protected, tokenize

Generator = Callable[[str, int], str]
Similarity = Callable[[str, list[str]], list[float]]  # (text, others) -> similarity of each to text

REPHRASE_REQUEST = (
    "Rephrase the instruction with different words but the same meaning. Keep these words exactly as they are: "
    "{terms}. Reply with the rephrased instruction only.\n\n"
    "Example:\nInstruction: Read the review and say whether it is 'good' or 'bad'\n"
    "Rephrased: Decide if the review is 'good' or 'bad' after reading it\n\n"
    "Instruction: {body}\nRephrased:"
)
_PREFIX_RE = re.compile(r"^(?:rephrased(?: instruction)?|instruction|here is[^:]*|sure[^:]*)\s*:\s*", re.I)


class RephraseRejected(RuntimeError):
    """No sample kept every required term of the source."""


def required_terms(text: str, task: str | None = None, protected: Iterable[str] | None = None) -> list[str]:
    """Terms a rephrase must keep: placeholders (verbatim), quoted spans (their text: answer options) and
    label words; not the answer-format words (``answer``, ``respond``), which a rephrase may reword."""
    prot = resolve_protected(task, protected)
    out: list[str] = []
    for tok in tokenize(text, prot):
        if tok.kind != "protected":
            continue
        quoted = tok.text[:1] in "'\""
        term = tok.text.strip("'\"") if quoted else tok.text
        if (term.lower() in FORMAT_WORDS and not quoted) or term.startswith("###"):
            continue
        if term.lower() not in (t.lower() for t in out):
            out.append(term)
    return out


def missing_terms(candidate: str, terms: Iterable[str]) -> list[str]:
    """Required terms absent from ``candidate`` (placeholders exact, words case-insensitive whole words)."""
    missing = []
    for term in terms:
        if term.startswith("{"):
            found = term in candidate
        else:
            found = re.search(rf"(?<![A-Za-z_]){re.escape(term)}(?![A-Za-z_])", candidate, re.I) is not None
        if not found:
            missing.append(term)
    return missing


def clean_output(raw: str, source: str) -> str:
    """First non-empty line of a model output, without a "Rephrased:" style prefix or wrapping quotes, with the
    source's trailing punctuation and spaces."""
    line = next((ln.strip() for ln in raw.splitlines() if ln.strip()), "")
    line = _PREFIX_RE.sub("", line).strip()
    if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'" and line.count(line[0]) == 2:
        line = line[1:-1].strip()
    body, _ = split_tail(line, placeholders=False)
    _, tail = split_tail(source, placeholders=False)
    return body + tail if body else ""


def rejection_reason(source: str, candidate: str, terms: Iterable[str], similarity: Similarity | None = None,
                     min_similarity: float = 0.7) -> str | None:
    """Why ``candidate`` is not an acceptable rephrase of ``source`` (None when it is). With ``similarity``
    (e.g. the MiniLM source's), an output less similar to the source than ``min_similarity`` is off-task."""
    if not candidate.strip():
        return "empty output"
    if " ".join(candidate.lower().split()) == " ".join(source.lower().split()):
        return "same as the source"
    missing = missing_terms(candidate, terms)
    if missing:
        return f"drops required terms {missing}"
    if similarity is not None:
        sim = similarity(source, [candidate])[0]
        if sim < min_similarity:
            return f"similarity {sim:.2f} to the source is below {min_similarity}"
    return None


def rephrase(
    text: str,
    generate: Generator | None = None,
    seed: int = 0,
    task: str | None = None,
    protected: Iterable[str] | None = None,
    tries: int = 4,
    similarity: Similarity | None = None,
    min_similarity: float = 0.7,
) -> str:
    """A rephrase of ``text`` keeping its required terms (and, with ``similarity``, its meaning);
    ``tries`` seeded samples, else :class:`RephraseRejected`."""
    generate = generate or model_rephraser()
    terms = required_terms(text, task, protected)
    body, _ = split_tail(text, placeholders=False)
    request = REPHRASE_REQUEST.format(terms=", ".join(terms) or "(none)", body=body)
    reasons = []
    for attempt in range(tries):
        candidate = clean_output(generate(request, seed * 1000 + attempt), text)
        reason = rejection_reason(text, candidate, terms, similarity, min_similarity)
        if reason is None:
            return candidate
        reasons.append(f"{candidate[:60]!r}: {reason}")
    raise RephraseRejected(f"no acceptable rephrase of {text[:60]!r} in {tries} tries: " + "; ".join(reasons))


def model_rephraser(model: str = "smollm2-135m-instruct", max_new_tokens: int = 64,
                    temperature: float = 0.8, device: str | None = None) -> Generator:
    """A seeded sampling generator from an instruction model (chat template when the tokenizer has one)."""
    import torch

    # torch and transformers: only for the model rephraser, so the rule-based levels stay light
    from coinlib.core.models import load_model
    from coinlib.core.params import ModelParams

    lm, tok = load_model(ModelParams(name=model), device=device)
    lm.eval()

    def generate(prompt: str, seed: int) -> str:
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt + "\n"
        batch = tok(text, return_tensors="pt", add_special_tokens=False).to(lm.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = lm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                              top_p=0.95, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate
