"""Score one instruction on many instances: input formats, label parsing, batched greedy generation and ranking.

Speed comes from three things, none of which changes a prediction:
- the token prefix every input of an instruction shares (system prompt, instruction) is run once and its key/value
  cache reused for every batch;
- batches are length-sorted, so little padding is computed;
- ``generate`` stops as soon as every row's answer is decided (a label word is complete, or the text can no longer
  start with one); ``rank`` scores all label words in one forward pass (each continuation attends to the input and to
  itself only, through a 4D attention mask).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch

from coinlib.core.formats import train_prompt
from coinlib.core.tasks import EvalTask

InputFormat = Literal["paper", "train", "chat"]
#: A registered task (its label words and the answers the paper's scoring accepts) or bare label words.
Labels = Union[EvalTask, Sequence[str]]
#: Characters the paper's code strips from both ends of a generated answer before matching label words.
STRIP_CHARS = ",._\"'-+=!?()&^%$#@:\\|{}[]<>/`\n\t\r\v\f\u200b "
#: Token texts the paper's code deletes from a lowercased answer before stripping.
REMOVED_MARKERS = ("<pad>", "</s>")
PAPER_RESPONSE = "### Response:"


# ------------------------------------------------------------------------------------------------ formats
def format_input(instruction: str, content: str, fmt: InputFormat, tokenizer=None) -> str:
    """Model input for one instance.

    ``paper``: instruction + content + "### Response:" (the paper's evaluation code); ``train``: the training
    format of our models (:func:`coinlib.core.formats.train_prompt`); ``chat``: the tokenizer's chat template with
    instruction + content as the user turn.
    """
    text = instruction + content
    if fmt == "paper":
        return text + PAPER_RESPONSE
    if fmt == "train":
        return train_prompt(text)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("input_format 'chat' needs a tokenizer with a chat template; use 'paper' or 'train'")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"unknown input format {fmt!r}; use 'paper', 'train' or 'chat'")


def label_continuation(label: str, fmt: InputFormat) -> str:
    """Text a label word is scored as in ``rank`` mode (see :func:`label_token_ids` for the tokens).

    ``paper``: the input ends with "### Response:" and the answer is read as the next word, " label";
    ``train``: the label right after "### Response:\\n" with no space, as training writes the output;
    ``chat``: the label as the assistant turn's text.
    """
    return f" {label}" if fmt == "paper" else label


def label_token_ids(tokenizer, labels: Sequence[str], fmt: InputFormat, append_eos: bool = False) -> list[list[int]]:
    """Token ids scored for each label in ``rank`` mode, tokenised apart from the input as training does.

    ``train`` scores exactly the target tokens training teaches (:func:`coinlib.train.batching.encode_pair`): the
    label tokens, plus the EOS when training appends one (``train.append_eos``; then a label's score is the
    likelihood of the whole answer, not of a prefix of a longer one). ``paper`` and ``chat`` score the label's
    tokens only.
    """
    ids = [tokenizer(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"] for lab in labels]
    if fmt == "train" and append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("input_format 'train' with train.append_eos scores an EOS, but the tokenizer has none")
        ids = [row + [tokenizer.eos_token_id] for row in ids]
    return ids


# ------------------------------------------------------------------------------------------------ parsing
def label_words(labels: Labels) -> tuple[str, ...]:
    """The label words (per label id for a task)."""
    return labels.labels if isinstance(labels, EvalTask) else tuple(labels)


def accepted_answers(labels: Labels) -> tuple[tuple[str, str], ...]:
    """``(answer text, label word)`` pairs in the order they are tried.

    For a task: its registry answers (:attr:`coinlib.core.tasks.EvalTask.accepted`), as the paper's code tries them
    (for SST-2, QNLI, RTE and WNLI the digits of the label ids too). For bare label words: each word itself, longest
    first, so a label that is a prefix of another never wins by accident.
    """
    if isinstance(labels, EvalTask):
        return labels.accepted
    return tuple((w.lower(), w) for w in sorted(labels, key=len, reverse=True))


def _clean(text: str) -> str:
    answer = text.lower()
    for marker in REMOVED_MARKERS:
        answer = answer.replace(marker, "")
    return answer


def parse_label(text: str, labels: Labels) -> str:
    """Label word of a generated answer, "" if unparseable, as the paper's scoring does it.

    The answer is lowercased, ``<pad>`` and ``</s>`` are deleted, :data:`STRIP_CHARS` are stripped from both ends,
    and the first accepted answer (:func:`accepted_answers`) it starts with gives the label.
    """
    answer = _clean(text).strip(STRIP_CHARS)
    return next((word for accepted, word in accepted_answers(labels) if answer.startswith(accepted)), "")


def answer_decided(text: str, labels: Labels) -> bool:
    """True when more generated text cannot change :func:`parse_label`: the answer is not a proper prefix of an
    accepted answer, and does not end inside a marker that a later token could complete and delete."""
    lowered = text.lower()
    if any(lowered.endswith(m[:k]) for m in REMOVED_MARKERS for k in range(1, len(m))):
        return False
    answer = _clean(text).lstrip(STRIP_CHARS)
    return not any(len(answer) < len(acc) and acc.startswith(answer) for acc, _ in accepted_answers(labels))


# ------------------------------------------------------------------------------------------------ batching
@dataclass
class Encoded:
    """Token ids of one instruction's inputs, split into the prefix they all share and each one's suffix."""

    prefix: list[int]
    suffixes: list[list[int]]


def encode(tokenizer, texts: Sequence[str], fmt: InputFormat) -> Encoded:
    """Tokenize ``texts`` and split off their longest common token prefix (each suffix keeps >= 1 token)."""
    ids = tokenizer(list(texts), add_special_tokens=fmt != "chat")["input_ids"]
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for row in ids[1:]:
        n = next((i for i in range(n) if row[i] != first[i]), n)
    return Encoded(first[:n], [row[n:] for row in ids])


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def _prefix_cache(model, prefix: list[int], device):
    if not prefix:
        return None
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    return out.past_key_values


def _expanded(cache, batch: int):
    if cache is None:
        return None
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(batch)
    return cache


def _eos_ids(model, tokenizer) -> set[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    return {t for t in [tokenizer.eos_token_id, *configured] if t is not None}


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------------ generate
@torch.inference_mode()
def generate_batch(model, tokenizer, prefix: list[int], cache, suffixes: list[list[int]], labels: Labels,
                   max_new_tokens: int = 7, early_stop: bool = True) -> list[str]:
    """Greedy continuations of ``prefix + suffix`` for each suffix (left padding between prefix and suffix).

    With ``early_stop`` the loop ends once every row's answer is decided (:func:`answer_decided`) or finished
    (EOS); the parsed label is then the same as after ``max_new_tokens``, the raw text may be shorter.
    """
    device, batch, width, p = _device(model), len(suffixes), max(map(len, suffixes)), len(prefix)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((batch, p + width), dtype=torch.long, device=device)
    mask[:, :p] = 1
    for i, s in enumerate(suffixes):
        ids[i, width - len(s):] = torch.tensor(s, device=device)
        mask[i, p + width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions[:, p:], logits_to_keep=1,
                past_key_values=_expanded(cache, batch), use_cache=True)
    eos = _eos_ids(model, tokenizer)
    generated: list[list[int]] = [[] for _ in range(batch)]
    finished = [False] * batch
    next_pos = positions[:, -1:] + 1
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1].argmax(-1)
        for i, t in enumerate(tokens.tolist()):
            if not finished[i]:
                if t in eos:
                    finished[i] = True
                else:
                    generated[i].append(t)
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        if early_stop:
            finished = [f or answer_decided(t, labels) for f, t in zip(finished, texts)]
        if all(finished) or step == max_new_tokens - 1:
            return texts
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                    past_key_values=out.past_key_values, use_cache=True)
        next_pos = next_pos + 1
    return texts


@torch.inference_mode()
def plain_greedy(model, tokenizer, text: str, fmt: InputFormat, max_new_tokens: int = 7) -> str:
    """Reference: one example, no padding, no cache reuse, ``model.generate`` greedy for ``max_new_tokens``."""
    ids = tokenizer(text, add_special_tokens=fmt != "chat", return_tensors="pt")["input_ids"].to(_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------ rank
@torch.inference_mode()
def rank_batch(model, prefix_len: int, cache, suffixes: list[list[int]], continuations: list[list[int]],
               pad_id: int) -> torch.Tensor:
    """Log-likelihood ``[batch, n_labels]`` of each continuation after ``prefix + suffix``, in one forward pass.

    Each row is ``pads, suffix, cont_1, ..., cont_K``: suffixes are left-padded so every continuation sits in the
    same columns of every row, and only those columns go through the output layer. A 4D mask lets ``cont_k`` see
    the prefix, the suffix and itself only, and its positions restart right after the suffix, so each score equals
    scoring ``prefix + suffix + cont_k`` alone.
    """
    device, batch = _device(model), len(suffixes)
    lead = max(map(len, suffixes))
    width = lead + sum(map(len, continuations))
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    segment = torch.full((width,), 0, dtype=torch.long, device=device)  # 0 input, k+1 continuation k
    ids[:, lead:] = torch.tensor([t for cont in continuations for t in cont], device=device)
    rows_seg = torch.zeros((batch, width), dtype=torch.long, device=device)
    positions = torch.zeros((batch, width), dtype=torch.long, device=device)
    start, targets = lead, []  # targets: (continuation index, column whose logits predict the token, token id)
    for j, cont in enumerate(continuations):
        segment[start:start + len(cont)] = j + 1
        targets += [(j, start + t - 1 if t else lead - 1, tok) for t, tok in enumerate(cont)]
        start += len(cont)
    rows_seg[:] = segment
    for i, s in enumerate(suffixes):
        ids[i, lead - len(s):lead] = torch.tensor(s, device=device)
        rows_seg[i, :lead - len(s)] = -1
        positions[i, lead - len(s):lead] = torch.arange(prefix_len, prefix_len + len(s))
        start = lead
        for cont in continuations:
            positions[i, start:start + len(cont)] = torch.arange(prefix_len + len(s), prefix_len + len(s) + len(cont))
            start += len(cont)
    q, k = rows_seg[:, :, None], rows_seg[:, None, :]
    allowed = torch.ones(width, width, dtype=torch.bool, device=device).tril() & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(width, dtype=torch.bool, device=device)  # pads attend to themselves (no empty rows)
    allowed = torch.cat([torch.ones((batch, width, prefix_len), dtype=torch.bool, device=device), allowed], dim=2)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    labs, cols, toks = (torch.tensor(c, device=device) for c in zip(*targets))
    keep, where = torch.unique(cols, return_inverse=True)
    logits = model(input_ids=ids, attention_mask=mask[:, None], position_ids=positions, logits_to_keep=keep,
                   past_key_values=_expanded(cache, batch), use_cache=cache is not None).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)[:, where, toks]  # [batch, n_targets]
    scores = torch.zeros((batch, len(continuations)), dtype=torch.float32, device=device)
    return scores.index_add_(1, labs, logprobs)


# ------------------------------------------------------------------------------------------------ one instruction
@dataclass
class Scored:
    """Per-instance result of one instruction: parsed label word ("" = unparseable), raw output, label scores."""

    prediction: str
    raw_output: str
    label_scores: str  # JSON object label -> log-likelihood (rank mode), "{}" in generate mode
    label_tokens: str = "{}"  # JSON object label -> number of tokens scored (rank mode), "{}" in generate mode


@torch.inference_mode()
def score_instruction(model, tokenizer, instruction: str, contents: Sequence[str], labels: Labels,
                      fmt: InputFormat = "paper", mode: Literal["generate", "rank"] = "generate",
                      batch_size: int = 16, max_new_tokens: int = 7, early_stop: bool = True,
                      progress=None, append_eos: bool = False) -> list[Scored]:
    """Score every content under one instruction; results are in the order of ``contents``.

    ``labels``: the task (generate mode then accepts what the paper's scoring accepts for it) or bare label words.
    ``progress`` (optional) is called with the number of instances finished after each batch; ``append_eos``: rank
    scoring in the ``train`` format also scores the EOS (as training with ``train.append_eos`` teaches it).
    """
    task, labels = labels, label_words(labels)
    texts = [format_input(instruction, c, fmt, tokenizer) for c in contents]
    enc = encode(tokenizer, texts, fmt)
    cache = _prefix_cache(model, enc.prefix, _device(model))
    results: list[Scored | None] = [None] * len(texts)
    conts = label_token_ids(tokenizer, labels, fmt, append_eos)
    n_tokens = json.dumps({lab: len(c) for lab, c in zip(labels, conts)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for batch in length_sorted_batches([len(s) for s in enc.suffixes], batch_size):
        suffixes = [enc.suffixes[i] for i in batch]
        if mode == "generate":
            outs = generate_batch(model, tokenizer, enc.prefix, cache, suffixes, task, max_new_tokens, early_stop)
            for i, text in zip(batch, outs):
                results[i] = Scored(parse_label(text, task), text, "{}")
        elif mode == "rank":
            scores = rank_batch(model, len(enc.prefix), cache, suffixes, conts, pad).tolist()
            for i, row in zip(batch, scores):
                best = max(range(len(labels)), key=row.__getitem__)
                results[i] = Scored(labels[best], label_continuation(labels[best], fmt),
                                    json.dumps({lab: round(v, 4) for lab, v in zip(labels, row)}), n_tokens)
        else:
            raise ValueError(f"unknown scoring mode {mode!r}; use 'generate' or 'rank'")
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]
