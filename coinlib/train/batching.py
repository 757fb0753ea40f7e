"""Training batches for COIN: tokenised entries, a pair-keeping sampler and the collator.

An *entry* is one dataset row: the original (``prompt`` -> ``target``), its positive (``pos_prompt`` ->
``target``, a paraphrased instruction) and its hard negative (``neg_prompt`` -> ``neg_target``, the same
instruction with another instance). The three always travel together, so a micro-batch of ``k`` entries is
one padded tensor of ``k`` originals, then ``k`` positives, then (optionally) ``k`` negatives, which the model
sees in a single forward pass. In the reference arrangement (``train.batching: reference``) the data comes in
consecutive pairs of entries that are each other's hard negatives (:func:`check_mutual_pairs`), a micro-batch
is one such pair, and no negative row is forwarded.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator, Sequence

import pandas as pd
import torch
from torch.utils.data import Sampler

from coinlib.core.formats import RESPONSE_MARKER, train_prompt

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("task", "prompt", "target", "pos_prompt", "neg_prompt", "neg_target")
IGNORE = -100
TRUNCATION_RULES = ("right", "keep_target")


def _encode(tokenizer, prompt: str, target: str, cutoff_len: int, append_eos: bool,
            truncation: str) -> tuple[list[int], list[int], bool, int]:
    """:func:`encode_pair` plus the target's length in tokens before truncation."""
    if truncation not in TRUNCATION_RULES:
        raise ValueError(f"unknown truncation rule {truncation!r}. Fix: use one of {', '.join(TRUNCATION_RULES)}.")
    p_ids = tokenizer(train_prompt(prompt), add_special_tokens=True)["input_ids"]
    t_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if append_eos:
        t_ids = t_ids + [tokenizer.eos_token_id]
    n_target = len(t_ids)
    truncated = len(p_ids) + len(t_ids) > cutoff_len
    if truncated and truncation == "right":
        ids, labels = p_ids + t_ids, [IGNORE] * len(p_ids) + t_ids
        return ids[:cutoff_len], labels[:cutoff_len], True, n_target
    if truncated:
        t_ids = t_ids[: max(1, cutoff_len // 2)]
        room = cutoff_len - len(t_ids)
        tail = min(len(tokenizer(RESPONSE_MARKER, add_special_tokens=False)["input_ids"]), room // 2)
        p_ids = p_ids[: room - tail] + (p_ids[-tail:] if tail else [])
    return p_ids + t_ids, [IGNORE] * len(p_ids) + t_ids, truncated, n_target


def encode_pair(tokenizer, prompt: str, target: str, cutoff_len: int, append_eos: bool = False,
                truncation: str = "right") -> tuple[list[int], list[int], bool]:
    """Token ids and labels of ``train_text(prompt, target)`` (+ EOS when ``append_eos``); labels cover the target.

    Prompt and target are tokenised separately, so the label boundary is exact. Without EOS (the reference
    code's setting) the last token, whose hidden state is pooled, is the last output token. Sequences longer
    than ``cutoff_len``: ``truncation="right"`` cuts from the right as the reference code does (the target may
    lose tokens or vanish); ``"keep_target"`` keeps the target (at most half the budget), the start of the
    prompt and its response marker and drops the middle of the prompt. Returns ``(input_ids, labels, truncated)``.
    """
    ids, labels, truncated, _ = _encode(tokenizer, prompt, target, cutoff_len, append_eos, truncation)
    return ids, labels, truncated


def encode_entries(dataset, tokenizer, cutoff_len: int, append_eos: bool = False, truncation: str = "right"):
    """Tokenise a contrastive dataset (columns of the data contract) into the columns the collator reads."""
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"training data lacks columns {missing} (has {dataset.column_names}). Fix: build it with "
            "coinlib.data.pairs.load_or_build(P), or add the columns of the data contract."
        )
    if len(dataset) == 0:
        raise ValueError("training data is empty. Fix: raise data.size or check data.tasks.")

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        o_ids, o_lab, t1, _ = _encode(tokenizer, row["prompt"], row["target"], cutoff_len, append_eos, truncation)
        p_ids, p_lab, t2, _ = _encode(tokenizer, row["pos_prompt"], row["target"], cutoff_len, append_eos, truncation)
        n_ids, _, t3, _ = _encode(tokenizer, row["neg_prompt"], row["neg_target"], cutoff_len, append_eos, truncation)
        return {"orig_ids": o_ids, "orig_labels": o_lab, "pos_ids": p_ids, "pos_labels": p_lab,
                "neg_ids": n_ids, "truncated": bool(t1 or t2 or t3)}

    keep = ["task"]
    encoded = dataset.map(encode, remove_columns=[c for c in dataset.column_names if c not in keep],
                          desc="tokenising entries")
    n_trunc = sum(encoded["truncated"])
    if n_trunc:
        log.warning("%d of %d entries exceed cutoff_len=%d and were shortened (truncation=%s)", n_trunc,
                    len(encoded), cutoff_len, truncation)
    return encoded


def truncation_report(dataset, tokenizer, cutoff_len: int, append_eos: bool = False) -> list[dict[str, Any]]:
    """What each truncation rule changes in ``dataset``: one row per rule in :data:`TRUNCATION_RULES`.

    Columns: ``entries``; ``entries_changed`` (any of the entry's three sequences is longer than ``cutoff_len``;
    the same entries for both rules); ``sequences_changed``; ``targets_shortened`` (labelled sequences, original
    or positive, that lost output tokens); ``targets_lost`` (labelled sequences left with no output token, which
    then contribute no generation loss).
    """
    rows = []
    for rule in TRUNCATION_RULES:
        changed = seqs = shortened = lost = 0
        for e in dataset:
            any_cut = False
            for prompt, target, labelled in ((e["prompt"], e["target"], True), (e["pos_prompt"], e["target"], True),
                                             (e["neg_prompt"], e["neg_target"], False)):
                _, labels, cut, n_target = _encode(tokenizer, prompt, target, cutoff_len, append_eos, rule)
                any_cut |= cut
                seqs += cut
                if labelled:
                    kept = sum(lab != IGNORE for lab in labels)
                    shortened += kept < n_target
                    lost += kept == 0 < n_target
            changed += any_cut
        rows.append({"rule": rule, "cutoff_len": cutoff_len, "entries": len(dataset), "entries_changed": changed,
                     "sequences_changed": seqs, "targets_shortened": shortened, "targets_lost": lost})
    return rows


def check_mutual_pairs(dataset) -> None:
    """Raise ``ValueError`` unless entries ``2k`` and ``2k+1`` are each other's hard negatives, for every ``k``.

    Mutual hard negatives: same task, and each entry's negative is the other's original (same instruction,
    other instance, other output). This is the order ``train.batching: reference`` trains in.
    """
    cols = {c: dataset[c] for c in ("task", "prompt", "target", "neg_prompt", "neg_target")}
    n = len(cols["task"])
    fix = ("Fix: build the data with coinlib.data.pairs (it emits such pairs; delete a data folder built by an "
           "older version so it is rebuilt), keep its order, or use train.batching: paired or in_batch.")
    if n % 2:
        raise ValueError(f"train.batching=reference needs entries in pairs of mutual hard negatives; the data has "
                         f"an odd number of entries ({n}). {fix}")
    for a in range(0, n, 2):
        b = a + 1
        ok = (cols["task"][a] == cols["task"][b] and cols["target"][a] != cols["target"][b]
              and cols["neg_prompt"][a] == cols["prompt"][b] and cols["neg_target"][a] == cols["target"][b]
              and cols["neg_prompt"][b] == cols["prompt"][a] and cols["neg_target"][b] == cols["target"][a])
        if not ok:
            raise ValueError(f"train.batching=reference needs entries 2k and 2k+1 to be each other's hard negatives "
                             f"(same task and instruction, other instance and output); entries {a} and {b} are not. "
                             + fix)


def token_lengths(dataset, tokenizer, cutoff_len: int, **options) -> pd.DataFrame:
    """Per entry, the token count of each sequence exactly as training encodes it (:func:`encode_entries` with
    ``options``: special tokens, truncation at ``cutoff_len``), with its ``task`` and whether it was ``truncated``.

    Columns: ``task, original, positive, negative, truncated``.
    """
    import datasets
    import pandas as pd

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # statistics, not a training run: no progress output
    try:
        encoded = encode_entries(dataset, tokenizer, cutoff_len, **options)
    finally:
        if shown:
            datasets.enable_progress_bars()
    return pd.DataFrame({
        "task": encoded["task"],
        **{name: [len(ids) for ids in encoded[col]]
           for name, col in (("original", "orig_ids"), ("positive", "pos_ids"), ("negative", "neg_ids"))},
        "truncated": encoded["truncated"],
    })


def micro_batch_order(tasks: Sequence[str], micro: int, seed: int, epoch: int = 0, shuffle: bool = True,
                      group_by_task: bool = False) -> list[int]:
    """Entry indices in training order; consecutive runs of ``micro`` indices form the micro-batches.

    ``group_by_task`` fills micro-batches with entries of one task (harder in-batch negatives); the
    leftovers of each task are pooled into mixed micro-batches at the end. ``shuffle`` permutes entries
    within tasks and micro-batches among themselves, reproducibly from ``(seed, epoch)``; without it the
    data order is kept (the reference recipe).
    """
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(tasks)))
    if not group_by_task:
        if shuffle:
            rng.shuffle(idx)
        return idx
    by_task: dict[str, list[int]] = {}
    for i in idx:
        by_task.setdefault(tasks[i], []).append(i)
    chunks: list[list[int]] = []
    rest: list[int] = []
    for members in by_task.values():
        if shuffle:
            rng.shuffle(members)
        full = len(members) - len(members) % micro
        chunks += [members[j:j + micro] for j in range(0, full, micro)]
        rest += members[full:]
    if shuffle:
        rng.shuffle(chunks)
    return [i for chunk in chunks for i in chunk] + rest


class PairSampler(Sampler[int]):
    """Yields entries (each an original with its positive and negative) in :func:`micro_batch_order`.

    Deterministic per epoch (``set_epoch`` is called by the trainer), so a resumed run sees the same batches.
    """

    def __init__(self, tasks: Sequence[str], micro: int, seed: int, shuffle: bool = True,
                 group_by_task: bool = False):
        self.tasks, self.micro, self.seed = list(tasks), micro, seed
        self.shuffle, self.group_by_task, self.epoch = shuffle, group_by_task, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(micro_batch_order(self.tasks, self.micro, self.seed, self.epoch, self.shuffle,
                                      self.group_by_task))

    def __len__(self) -> int:
        return len(self.tasks)


class PairCollator:
    """Pads a list of encoded entries into one batch: originals, then positives, then negatives.

    Output: ``input_ids``/``attention_mask``/``labels`` of shape ``[g * k, L]`` with ``g`` = 3 (negatives
    included) or 2, ``k`` = entries; negatives carry no labels (no generation loss on them). Padding follows
    ``tokenizer.padding_side``; pooling finds the last real token either way.
    """

    def __init__(self, tokenizer, negatives: bool = True, pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.left = tokenizer.padding_side == "left"
        self.negatives = negatives
        self.multiple = pad_to_multiple_of

    def __call__(self, entries: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [(e["orig_ids"], e["orig_labels"]) for e in entries]
        seqs += [(e["pos_ids"], e["pos_labels"]) for e in entries]
        if self.negatives:
            seqs += [(e["neg_ids"], [IGNORE] * len(e["neg_ids"])) for e in entries]
        width = max(len(ids) for ids, _ in seqs)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        ids_t = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask_t = torch.zeros((len(seqs), width), dtype=torch.long)
        lab_t = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
        for row, (ids, labels) in enumerate(seqs):
            sl = slice(width - len(ids), width) if self.left else slice(0, len(ids))
            ids_t[row, sl] = torch.tensor(ids)
            mask_t[row, sl] = 1
            lab_t[row, sl] = torch.tensor(labels)
        return {"input_ids": ids_t, "attention_mask": mask_t, "labels": lab_t}
