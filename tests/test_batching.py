"""Tokenised entries, the pair-keeping micro-batch order and the collator."""

from __future__ import annotations

import pytest
import torch
from entries_helper import make_entries

from coinlib.core.formats import train_text
from coinlib.train.batching import (
    IGNORE,
    PairCollator,
    PairSampler,
    encode_entries,
    encode_pair,
    micro_batch_order,
    token_lengths,
)


def test_encode_pair_default_has_no_eos_and_labels_cover_the_target(smol_tokenizer):
    ids, labels, truncated = encode_pair(smol_tokenizer, "Is it good?", "positive", 64)
    n_target = len(smol_tokenizer("positive", add_special_tokens=False)["input_ids"])
    assert not truncated and smol_tokenizer.eos_token_id not in ids  # the reference appends no EOS
    assert labels == [IGNORE] * (len(ids) - n_target) + ids[-n_target:]
    assert smol_tokenizer.decode(ids) == train_text("Is it good?", "positive")


def test_encode_pair_labels_cover_target_and_eos_only(smol_tokenizer):
    ids, labels, truncated = encode_pair(smol_tokenizer, "Is it good?", "positive", 64, append_eos=True)
    n_target = len(smol_tokenizer("positive", add_special_tokens=False)["input_ids"]) + 1
    assert not truncated and len(ids) == len(labels)
    assert labels[: len(ids) - n_target] == [IGNORE] * (len(ids) - n_target)
    assert labels[-n_target:] == ids[-n_target:] and ids[-1] == smol_tokenizer.eos_token_id
    assert smol_tokenizer.decode(ids[:-1]) == train_text("Is it good?", "positive")


def test_encode_pair_truncation_keeps_target_and_response_marker(smol_tokenizer):
    long_prompt = "word " * 200
    ids, labels, truncated = encode_pair(smol_tokenizer, long_prompt, "negative", 32, append_eos=True,
                                         truncation="keep_target")
    assert truncated and len(ids) == 32
    text = smol_tokenizer.decode(ids)
    assert text.startswith("word") and text.endswith("### Response:\nnegative" + smol_tokenizer.eos_token)
    assert sum(lab != IGNORE for lab in labels) == len(smol_tokenizer("negative", add_special_tokens=False)["input_ids"]) + 1


def test_encode_entries_requires_contract_columns(smol_tokenizer):
    with pytest.raises(ValueError, match="lacks columns.*neg_prompt"):
        encode_entries(make_entries(3).remove_columns("neg_prompt"), smol_tokenizer, 64)


@pytest.mark.parametrize("group", [False, True])
def test_order_is_a_seeded_permutation(group):
    tasks = make_entries(20)["task"]
    a = micro_batch_order(tasks, 2, seed=0, epoch=0, group_by_task=group)
    assert sorted(a) == list(range(20))
    assert a == micro_batch_order(tasks, 2, seed=0, epoch=0, group_by_task=group)
    assert a != micro_batch_order(tasks, 2, seed=0, epoch=1, group_by_task=group)
    assert micro_batch_order(tasks, 2, 0, shuffle=False) == list(range(20))  # reference order


def test_group_by_task_fills_micro_batches_with_one_task():
    tasks = [["rte", "sst2", "cola"][i % 3] for i in range(21)]  # 7 entries per task: 3 micro-batches of 2, 1 leftover
    order = micro_batch_order(tasks, 2, seed=3, group_by_task=True)
    chunks = [order[i:i + 2] for i in range(0, 18, 2)]
    assert all(len({tasks[i] for i in c}) == 1 for c in chunks)
    assert sorted(tasks[i] for i in order[18:]) == sorted(set(tasks))  # one leftover per task, pooled at the end
    sampler = PairSampler(tasks, 2, seed=3, group_by_task=True)
    sampler.set_epoch(1)
    assert list(sampler) == micro_batch_order(tasks, 2, 3, epoch=1, group_by_task=True)


def test_token_lengths_are_the_lengths_training_encodes(smol_tokenizer):
    """Notebook 01's statistics: the sequences encode_entries gives the trainer (special tokens, truncation)."""
    entries = make_entries(4)
    cut, full = token_lengths(entries, smol_tokenizer, 24), token_lengths(entries, smol_tokenizer, 512)
    enc = encode_entries(entries, smol_tokenizer, 24)
    assert list(cut.columns) == ["task", "original", "positive", "negative", "truncated"]
    assert cut["task"].tolist() == entries["task"]
    for name, col in (("original", "orig_ids"), ("positive", "pos_ids"), ("negative", "neg_ids")):
        assert cut[name].tolist() == [len(ids) for ids in enc[col]]
        assert (cut[name] <= 24).all()
    assert cut["truncated"].all() and not full["truncated"].any()
    assert (full["original"] > 24).all()  # the untruncated sequences are longer than the cutoff


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_keeps_each_entry_with_its_positive_and_negative(smol_tokenizer, side):
    enc = encode_entries(make_entries(3), smol_tokenizer, 64)
    tok = smol_tokenizer
    tok.padding_side = side
    try:
        batch = PairCollator(tok, negatives=True)([enc[0], enc[2]])
    finally:
        tok.padding_side = "right"
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape[0] == 6
    expected = [enc[0]["orig_ids"], enc[2]["orig_ids"], enc[0]["pos_ids"], enc[2]["pos_ids"],
                enc[0]["neg_ids"], enc[2]["neg_ids"]]
    for row, exp in enumerate(expected):
        assert ids[row][mask[row].bool()].tolist() == exp
    assert (labels[4:] == IGNORE).all()  # no generation loss on negatives
    assert torch.equal(labels[0][mask[0].bool()], torch.tensor(enc[0]["orig_labels"]))
    pad_col = 0 if side == "left" else -1
    assert (mask[:, pad_col] == 0).any()
    assert PairCollator(tok, negatives=False)([enc[0], enc[2]])["input_ids"].shape[0] == 4
