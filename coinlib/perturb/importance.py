"""Word importance: a seeded random order, or leave-one-out (how much the model's loss on a small labelled
sample rises when the word is removed), plus the model scorers the importance and the attack use.

A *scorer* maps an instruction to a number the attacker wants to lower (accuracy) or raise (loss); the
functions here take plain callables so they are testable without a model.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from coinlib.core.formats import train_prompt
from coinlib.core.tasks import load_task
from coinlib.perturb.tokens import (
    editable_positions,
    random_order,
    render,
    resolve_protected,
    tokenize,
)

Scorer = Callable[[str], float]
Example = tuple[str, str]  # (content, gold label word)

#: GLUE validation split and content fields of each task (DESIGN.md section 2, "content per task").
def without_token(text: str, index: int, task: str | None = None, protected: Iterable[str] | None = None) -> str:
    """``text`` with token ``index`` removed (and the doubled space that leaves collapsed)."""
    tokens = tokenize(text, resolve_protected(task, protected))
    return re.sub(r"  +", " ", render(tokens[:index] + tokens[index + 1:]))


def loo_importance(text: str, scorer: Scorer, task: str | None = None,
                   protected: Iterable[str] | None = None) -> list[int]:
    """Editable token indices, most important first: importance = scorer(text without the word) - scorer(text)
    (a loss scorer: removing an important word raises the loss). Ties keep text order."""
    prot = resolve_protected(task, protected)
    positions = editable_positions(tokenize(text, prot))
    base = scorer(text)
    gain = {i: scorer(without_token(text, i, protected=prot)) - base for i in positions}
    return sorted(positions, key=lambda i: (-gain[i], i))


def word_order(text: str, method: str = "random", seed: int = 0, scorer: Scorer | None = None,
               task: str | None = None, protected: Iterable[str] | None = None) -> list[int]:
    """Editable token indices by importance: ``random`` (seeded) or ``loo`` (needs a loss ``scorer``)."""
    prot = resolve_protected(task, protected)
    if method == "random":
        return random_order(editable_positions(tokenize(text, prot)), f"order:{seed}")
    if method == "loo":
        if scorer is None:
            raise ValueError("importance 'loo' needs a loss scorer; build one with label_scorer(...)")
        return loo_importance(text, scorer, protected=prot)
    raise ValueError(f"unknown importance method {method!r}; choose 'random' or 'loo'")


def format_input(instruction: str, content: str) -> str:
    """Model input for an instruction and an instance's content (the training/evaluation response format)."""
    return train_prompt(f"{instruction.rstrip()}\n{content}")


def labelled_sample(task: str, n: int = 16, seed: int = 0, mirror: str | None = "auto") -> list[Example]:
    """``n`` seeded ``(content, label word)`` pairs of a registered evaluation task (its evaluation format)."""
    import numpy as np


    rows = load_task(task, None, mirror)
    chosen = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [(rows["content"].iat[i], rows["gold"].iat[i]) for i in chosen]


def label_scorer(model, tokenizer, examples: Sequence[Example], labels: Sequence[str], metric: str = "loss",
                 batch_size: int = 16) -> Scorer:
    """Scorer of an instruction on labelled ``examples``: mean cross-entropy of the gold label (``loss``) or
    accuracy of ranking the ``labels`` by likelihood (``accuracy``). One forward pass per (example, label)."""
    import torch

    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    device = next(model.parameters()).device

    def nll(prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Mean per-token negative log-likelihood of each target after its prompt."""
        out = []
        for s in range(0, len(prompts), batch_size):
            ids, tgt_mask = [], []
            for p, t in zip(prompts[s:s + batch_size], targets[s:s + batch_size]):
                p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
                t_ids = tokenizer(t, add_special_tokens=False)["input_ids"]
                ids.append(p_ids + t_ids)
                tgt_mask.append([0] * len(p_ids) + [1] * len(t_ids))
            width = max(map(len, ids))
            pad = tokenizer.pad_token_id
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
            attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            mask = torch.tensor([m + [0] * (width - len(m)) for m in tgt_mask], device=device, dtype=torch.float)
            with torch.no_grad():
                logits = model(input_ids=input_ids, attention_mask=attn).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
            m = mask[:, 1:]
            out.append(-(logp * m).sum(1) / m.sum(1))
        return torch.cat(out)

    def score(instruction: str) -> float:
        prompts = [format_input(instruction, c) for c, _ in examples]
        if metric == "loss":
            return float(nll(prompts, [g for _, g in examples]).mean())
        losses = nll([p for p in prompts for _ in labels], [lab for _ in prompts for lab in labels])
        pred = losses.view(len(prompts), len(labels)).argmin(1).tolist()
        return sum(labels[k] == g for k, (_, g) in zip(pred, examples)) / len(examples)

    return score
