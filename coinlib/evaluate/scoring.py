"""Score one instruction on many instances: input formats, label parsing, batched greedy generation and ranking.

Speed comes from these, none of which changes a prediction:
- the token prefix every input of an instruction shares (system prompt, instruction) is run once and its key/value
  cache reused for every batch;
- ``generate`` batches are length-sorted, so little padding is computed, and stop as soon as every row's answer is
  decided (a label word is complete, or the text can no longer start with one);
- ``rank`` scores all label words in one forward pass (each continuation attends to the input and to itself only,
  through a 4D attention mask), packs several instances into a row when that removes more padding than it adds
  attention (:func:`rank_plan`), and sends only the columns that predict label tokens through the output layer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch

from coinlib.core.formats import InputFormat, format_input  # noqa: F401  (format_input: part of scoring's API)
from coinlib.core.tasks import EvalTask

#: A registered task (its label words and the answers the paper's scoring accepts) or bare label words.
Labels = Union[EvalTask, Sequence[str]]
#: Characters the paper's code strips from both ends of a generated answer before matching label words.
STRIP_CHARS = ",._\"'-+=!?()&^%$#@:\\|{}[]<>/`\n\t\r\v\f\u200b "
#: Token texts the paper's code deletes from a lowercased answer before stripping.
REMOVED_MARKERS = ("<pad>", "</s>")


# ------------------------------------------------------------------------------------------------ formats
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
#: Most instances packed into one row of a ``rank`` pass.
MAX_PER_ROW = 4


def packed_rows(lengths: Sequence[int], per_row: int) -> list[list[int]]:
    """Indices grouped at most ``per_row`` to a row, in ``ceil(n / per_row)`` rows of near-equal total length.

    Longest first, each into the row with the smallest total so far that still has room; rows come out
    longest first.
    """
    n_rows = -(-len(lengths) // per_row)
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    totals = [0] * n_rows
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = min((j for j in range(n_rows) if len(rows[j]) < per_row), key=lambda j: (totals[j], j))
        rows[j].append(i)
        totals[j] += lengths[i]
    order = sorted(range(n_rows), key=lambda j: (-totals[j], rows[j]))
    return [rows[j] for j in order]


def _pass_width(suffix_lens: Sequence[int], rows: list[list[int]], cont_len: int) -> int:
    """Columns of one ``rank`` pass over ``rows`` (see :func:`rank_batch`)."""
    body = max(sum(suffix_lens[i] - 1 for i in row) for row in rows)
    return body + max(map(len, rows)) * (1 + cont_len)


def rank_plan(suffix_lens: Sequence[int], cont_len: int, rows_per_pass: int, prefix_len: int,
              keys_per_token: float) -> list[list[list[int]]]:
    """Passes of rows of instance indices for ``rank``: how many instances share a row is chosen per instruction.

    Packing several instances into a row removes padding but widens the rows each token attends over. For 1 to
    :data:`MAX_PER_ROW` instances per row the cost ``sum over passes of rows x width x (1 + (prefix + width) /
    keys_per_token)`` (linear layers plus attention, ``keys_per_token`` = attended keys that cost as much as one
    token's linear layers) is computed from the lengths alone, and the cheapest plan is kept.
    """
    best, best_cost = None, float("inf")
    for per_row in range(1, min(MAX_PER_ROW, len(suffix_lens)) + 1):
        rows = packed_rows([n + cont_len for n in suffix_lens], per_row)
        passes = [rows[i:i + rows_per_pass] for i in range(0, len(rows), rows_per_pass)]
        cost = 0.0
        for p in passes:
            width = _pass_width(suffix_lens, p, cont_len)
            cost += len(p) * width * (1 + (prefix_len + width) / keys_per_token)
        if cost < best_cost:
            best, best_cost = passes, cost
    return best  # type: ignore[return-value]


def keys_per_token(model) -> float:
    """Attended keys whose attention costs as much as one token's linear layers: params per layer / (2 x hidden)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    emb = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters()) - emb.numel()
    return max(1.0, params / max(1, cfg.num_hidden_layers) / (2 * cfg.hidden_size))


@torch.inference_mode()
def rank_batch(model, prefix_len: int, cache, suffixes: list[list[int]], continuations: list[list[int]],
               pad_id: int, rows: list[list[int]] | None = None) -> torch.Tensor:
    """Log-likelihood ``[n, n_labels]`` of each continuation after ``prefix + suffix``, in one forward pass.

    ``rows`` packs instances (indices into ``suffixes``) into rows; default one per row. The ``n`` result rows
    are the instances in ``rows`` order (by default, ``suffixes`` order). A row of ``m`` instances
    is ``pads, body, slot_1 .. slot_M``: the body holds every instance's suffix but its last token, and slot ``j``
    holds instance ``j``'s last suffix token followed by all continuations (``cont_1 .. cont_K``), so the columns
    whose logits are needed are the same in every row and only those go through the output layer. A 4D mask lets
    each token see the prefix and its own instance only (a continuation: the suffix and itself), and positions
    follow each instance's own sequence, so each score equals scoring ``prefix + suffix + cont_k`` alone.
    """
    device, dtype = _device(model), next(model.parameters()).dtype
    rows = rows if rows is not None else [[i] for i in range(len(suffixes))]
    cont_len = sum(map(len, continuations))
    slot = 1 + cont_len
    n_slots = max(map(len, rows))
    width = _pass_width([len(s) for s in suffixes], rows, cont_len)
    body = width - n_slots * slot
    n_rows = len(rows)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    inst = torch.full((n_rows, width), -1, dtype=torch.long)  # slot of the instance a column belongs to; -1 pad
    part = torch.zeros((n_rows, width), dtype=torch.long)  # 0 suffix, k+1 continuation k
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    # the slot layout (same in every row): last suffix token, then each continuation
    slot_ids = [None] + [t for cont in continuations for t in cont]
    slot_part = [0] + [k + 1 for k, cont in enumerate(continuations) for _ in cont]
    slot_off = [0] + [t for cont in continuations for t in range(len(cont))]
    for r, row in enumerate(rows):
        col = body - sum(len(suffixes[i]) - 1 for i in row)  # left padding of the body
        for j, i in enumerate(row):
            s = suffixes[i]
            n = len(s) - 1
            ids[r, col:col + n] = torch.tensor(s[:-1], dtype=torch.long)
            inst[r, col:col + n] = j
            pos[r, col:col + n] = torch.arange(prefix_len, prefix_len + n)
            col += n
            start = body + j * slot
            ids[r, start] = s[-1]
            ids[r, start + 1:start + slot] = torch.tensor(slot_ids[1:], dtype=torch.long)
            inst[r, start:start + slot] = j
            part[r, start:start + slot] = torch.tensor(slot_part)
            pos[r, start:start + slot] = prefix_len + n + torch.tensor(slot_off) + torch.tensor([0] + [1] * cont_len)
    q_inst, k_inst = inst[:, :, None], inst[:, None, :]
    allowed = (q_inst == k_inst) & (k_inst >= 0) & (pos[:, None, :] <= pos[:, :, None])
    allowed &= (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
    allowed |= torch.eye(width, dtype=torch.bool)  # pads attend to themselves (no empty rows)
    allowed = torch.cat([torch.ones((n_rows, width, prefix_len), dtype=torch.bool), allowed], dim=2)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    # targets (slot j, label k, column whose logits predict the token, token id); columns repeat per slot
    targets = []
    for j in range(n_slots):
        start, off = body + j * slot, 1
        for k, cont in enumerate(continuations):
            targets += [(j, k, start if t == 0 else start + off + t - 1, tok) for t, tok in enumerate(cont)]
            off += len(cont)
    slots_t, labs, cols, toks = (torch.tensor(c, device=device) for c in zip(*targets))
    keep, where = torch.unique(cols, return_inverse=True)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)[:, None], position_ids=pos.to(device),
                   logits_to_keep=keep, past_key_values=_expanded(cache, n_rows), use_cache=cache is not None).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)[:, where, toks]  # [rows, n_targets]
    per_slot = torch.zeros((n_rows, n_slots * len(continuations)), dtype=torch.float32, device=device)
    per_slot.index_add_(1, slots_t * len(continuations) + labs, logprobs)
    per_slot = per_slot.view(n_rows, n_slots, len(continuations))
    return torch.cat([per_slot[r, :len(row)] for r, row in enumerate(rows)]).cpu()


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
    ``generate`` runs ``batch_size`` instances per pass; ``rank`` runs ``batch_size`` rows per pass, each row
    packing 1 to :data:`MAX_PER_ROW` instances (:func:`rank_plan`). ``progress`` (optional) is called with the
    number of instances finished after each pass; ``append_eos``: rank scoring in the ``train`` format also scores
    the EOS (as training with ``train.append_eos`` teaches it).
    """
    if mode not in ("generate", "rank"):
        raise ValueError(f"unknown scoring mode {mode!r}; use 'generate' or 'rank'")
    task, labels = labels, label_words(labels)
    texts = [format_input(instruction, c, fmt, tokenizer) for c in contents]
    enc = encode(tokenizer, texts, fmt)
    cache = _prefix_cache(model, enc.prefix, _device(model))
    results: list[Scored | None] = [None] * len(texts)
    conts = label_token_ids(tokenizer, labels, fmt, append_eos)
    n_tokens = json.dumps({lab: len(c) for lab, c in zip(labels, conts)})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if mode == "rank":
        plan = rank_plan([len(x) for x in enc.suffixes], sum(map(len, conts)), batch_size, len(enc.prefix),
                         keys_per_token(model))
        for rows in plan:
            batch = [i for row in rows for i in row]
            scores = rank_batch(model, len(enc.prefix), cache, enc.suffixes, conts, pad, rows).tolist()
            for i, row in zip(batch, scores):
                best = max(range(len(labels)), key=row.__getitem__)
                results[i] = Scored(labels[best], label_continuation(labels[best], fmt),
                                    json.dumps({lab: round(v, 4) for lab, v in zip(labels, row)}), n_tokens)
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]
    for batch in length_sorted_batches([len(s) for s in enc.suffixes], batch_size):
        suffixes = [enc.suffixes[i] for i in batch]
        outs = generate_batch(model, tokenizer, enc.prefix, cache, suffixes, task, max_new_tokens, early_stop)
        for i, text in zip(batch, outs):
            results[i] = Scored(parse_label(text, task), text, "{}")
        if progress is not None:
            progress(len(batch))
    return results  # type: ignore[return-value]
