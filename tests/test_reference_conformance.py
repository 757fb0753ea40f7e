"""Training as the paper's reference code (luka-group/CoIN) does, checked against values worked out by hand.

Pooled token (no EOS, last real token for left and right padding), the 2-entry micro-batch of mutual hard
negatives and its total loss, the contrastive weight for lambda below and above 1, right truncation, the data
order of the build, and the seeded LoRA initialisation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from entries_helper import make_entries
from torch import nn

from coinlib.core.formats import train_prompt
from coinlib.core.models import tiny_llama
from coinlib.core.params import PARAMS_DIR, load_params, validate
from coinlib.data import pairs
from coinlib.data.flan import load_templates
from coinlib.train import trainer as train_mod
from coinlib.train.batching import (
    IGNORE,
    PairCollator,
    check_mutual_pairs,
    encode_entries,
    encode_pair,
    truncation_report,
)
from coinlib.train.loss import coin_loss, contrastive_weight
from coinlib.core.pooling import last_token_pool


def _params(tmp_path, **train):
    return validate({"run": {"name": "conf", "output_root": str(tmp_path), "seed": 0},
                     "train": {"max_steps": 1, "batch_size": 2, "micro_batch_pairs": 2, "report_to": [],
                               "cutoff_len": 64, **train}})


# ------------------------------------------------------------------------------------------ 1. pooled token
def test_recipes_default_to_the_reference_setting():
    names = ["paper-alpaca7b", "cit", *(f"lambda{x}" for x in (1, 10, 100, 1000, 10000, 100000000)),
             "cpu-mini", "cpu-mini-cit", "cpu-mini-generate",
             *(f"cpu-mini-lambda{x}" for x in (1, 10, 100, 10000, 100000000))]
    for name in names:
        t = load_params(PARAMS_DIR / f"{name}.yaml").train
        assert (t.batching, t.append_eos, t.truncation, t.micro_batch_pairs) == ("reference", False, "right", 2), name
        assert not train_mod.shuffles(t) and not train_mod.uses_row_negatives(t), name


def test_pooled_position_hand_built_left_and_right_padding():
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float).reshape(2, 5, 2)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # real lengths 3 and 5
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, right), torch.stack([hidden[0, 2], hidden[1, 4]]))
    assert torch.equal(last_token_pool(hidden, left), hidden[:, -1])  # the reference's hidden_states[:, -1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooled_token_is_the_last_output_token_without_eos(smol_tokenizer, side):
    tok = smol_tokenizer
    data = make_entries(2).to_dict()
    enc = encode_entries(make_entries(2), tok, 64)  # defaults: no EOS, right truncation
    tok.padding_side = side
    try:
        batch = PairCollator(tok, negatives=False)([enc[0], enc[1]])
    finally:
        tok.padding_side = "right"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # some rows are padded
    lengths = [len(tok(train_prompt(p))["input_ids"]) + len(tok(t, add_special_tokens=False)["input_ids"])
               for p, t in zip(data["prompt"] + data["pos_prompt"], data["target"] * 2)]
    width = max(lengths)
    assert ids.shape == (4, width)  # 2 originals + 2 positives: no negative row, no EOS
    expected_pos = [width - 1] * 4 if side == "left" else [n - 1 for n in lengths]
    hidden = ids[:, :, None].float()  # "hidden state" = the token id, so the pooled value names the token
    pooled = last_token_pool(hidden, mask)[:, 0].long()
    last_target_tokens = [tok(t, add_special_tokens=False)["input_ids"][-1] for t in data["target"] * 2]
    assert pooled.tolist() == [ids[r, c].item() for r, c in enumerate(expected_pos)] == last_target_tokens
    assert tok.eos_token_id not in ids[mask.bool()].tolist()


# ------------------------------------------------------------------------------------------ 2. micro-batch loss
L1, L2 = 0.0, math.log(2.0)  # logits [0, ln 2, 0]: softmax [1/4, 1/2, 1/4]


def _deg(d: float) -> list[float]:
    return [math.cos(math.radians(d)), math.sin(math.radians(d))]


class _Fixed(nn.Module):
    """Returns fixed logits and last-layer hidden states; records the rows it was given."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.logits, self.hidden, self.rows = logits, hidden, []

    def forward(self, input_ids, attention_mask, output_hidden_states=False, use_cache=False):
        self.rows.append(input_ids.shape[0])
        return SimpleNamespace(logits=self.logits * self.scale, hidden_states=(self.hidden * self.scale,))


def _hand_batch():
    """Rows o1, o2, p1, p2 (2 entries that are each other's negatives); width 3, vocabulary 3, hidden size 2.

    o2 is left-padded, p2 right-padded. Each row has one labelled token, predicted by logits [0, ln 2, 0];
    the last real token carries the chosen hidden state, every other position a decoy.
    """
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 0]])
    labels = torch.full((4, 3), IGNORE)
    labels[0, 2], labels[1, 2], labels[2, 2], labels[3, 1] = 1, 0, 1, 1  # p(label) = 1/2, 1/4, 1/2, 1/2
    logits = torch.full((4, 3, 3), 5.0)
    for row, pos in ((0, 1), (1, 1), (2, 1), (3, 0)):  # the position predicting the labelled token
        logits[row, pos] = torch.tensor([L1, L2, L1])
    hidden = torch.tensor([[9.0, -7.0]]).repeat(4, 3, 1)  # decoys
    angles = {0: 0, 1: 90, 2: 60, 3: 120}  # o1, o2, p1, p2
    last = {0: 2, 1: 2, 2: 2, 3: 1}
    for row, deg in angles.items():
        hidden[row, last[row]] = torch.tensor(_deg(deg))
    batch = {"input_ids": torch.ones(4, 3, dtype=torch.long), "attention_mask": mask, "labels": labels}
    return batch, logits, hidden


def _hand_expected(lam: float) -> tuple[float, float, float, float]:
    """G, L_ctr, w and the total, from the construction of :func:`_hand_batch` (tau 0.05)."""
    ln2 = math.log(2)
    g = (ln2 + 2 * ln2) / 2 + (ln2 + ln2) / 2  # originals: -ln 1/2, -ln 1/4; positives: -ln 1/2 twice
    c = math.cos
    r = math.radians
    # cosines: o1.p1 = cos 60, o1.p2 = cos 120, o2.p1 = cos 30, o2.p2 = cos 30
    s11, s12, s21, s22 = c(r(60)) / 0.05, c(r(120)) / 0.05, c(r(30)) / 0.05, c(r(30)) / 0.05

    def nll(own: float, other: float) -> float:
        return math.log(1 + math.exp(other - own))

    forward = (nll(s11, s12) + nll(s22, s21)) / 2  # each original picks its paraphrase among both paraphrases
    backward = (nll(s11, s21) + nll(s22, s12)) / 2  # each paraphrase picks its original among both originals
    ctr = (forward + backward) / 2
    scaled = lam * ctr  # the reference: L_ctr * lambda, rescaled to G only when larger than G
    w = lam * min(lam, g / scaled) if scaled > g else lam
    return g, ctr, w, g + w * ctr


@pytest.mark.parametrize("lam", [0.5, 1.0, 1000.0])
def test_two_entry_micro_batch_total_loss_by_hand(tmp_path, smol_tokenizer, lam):
    P = _params(tmp_path, **{"lambda": lam})
    batch, logits, hidden = _hand_batch()
    model = _Fixed(logits, hidden)
    trainer = train_mod.CoinTrainer(model=tiny_llama(vocab_size=8, seed=0), args=train_mod.training_arguments(P),
                                    train_dataset=make_entries(2), coin=P.train)
    loss = trainer.compute_loss(model, batch)
    g, ctr, w, total = _hand_expected(lam)
    assert model.rows == [4]  # one forward over 2 originals + 2 paraphrases: no extra negative sequence
    assert trainer._sums["loss_ent"] == pytest.approx(g, rel=1e-6)
    assert trainer._sums["loss_ctr"] == pytest.approx(ctr, rel=1e-5)
    assert trainer._sums["weight"] == pytest.approx(w, rel=1e-5)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    loss.backward()  # the weight is a constant: d total / d scale = d G / d scale + w * d L_ctr / d scale
    assert model.scale.grad is not None and torch.isfinite(model.scale.grad)


def test_hand_batch_weights_differ_between_lambdas():
    # the micro-batch above lands on each branch of the reference weight: lambda 0.5 keeps lambda, 1 and 1000 rescale
    g, ctr, *_ = _hand_expected(1.0)
    assert 0.5 * ctr < g < 1.0 * ctr


# ------------------------------------------------------------------------------------------ 3. weight
@pytest.mark.parametrize("g,ctr,lam,expected", [
    # lambda * L_ctr <= G: the weight is lambda
    (2.0, 0.5, 0.5, 0.5), (2.0, 0.5, 1.0, 1.0), (2.0, 0.1, 10.0, 10.0),
    # lambda * L_ctr > G: lambda * min(lambda, G / (lambda L_ctr))
    (2.0, 0.5, 10.0, 4.0), (2.0, 0.5, 1000.0, 4.0), (1.0, 4.0, 1.0, 0.25),
    (1.0, 3.0, 0.5, 0.25),   # lambda < 1: lambda**2 = 0.25, not min(lambda, G/L_ctr) = 1/3
    (1.0, 10.0, 0.5, 0.1),   # lambda < 1: G / L_ctr = 0.1 < lambda**2
    (1.0, 2.0, 0.5, 0.5),    # lambda * L_ctr == G: not rescaled
])
def test_weight_matches_the_reference_formula(g, ctr, lam, expected):
    def reference(g: float, ctr: float, lam: float) -> float:  # the reference code's rule, on plain floats
        scaled = ctr * lam
        return lam * min(lam, g / scaled) if scaled != 0 and scaled > g else lam

    assert reference(g, ctr, lam) == pytest.approx(expected)
    w = contrastive_weight(torch.tensor(g), torch.tensor(ctr), lam)
    assert w.item() == pytest.approx(expected, rel=1e-6)
    total, _ = coin_loss(torch.tensor(g), torch.tensor(ctr), lam)
    assert total.item() == pytest.approx(g + expected * ctr, rel=1e-6)


@pytest.mark.parametrize("lam", [0.5, 1, 10, 1000])
def test_weight_for_each_lambda_over_a_grid(lam):
    for g in (0.3, 1.0, 2.5):
        for ctr in (0.01, 0.7, 3.0, 50.0):
            scaled = ctr * lam
            expected = lam * min(lam, g / scaled) if scaled > g else lam
            if lam >= 1:  # the reference rule equals the cap min(lambda, G / L_ctr) for lambda >= 1
                assert expected == pytest.approx(min(lam, g / ctr))
            assert contrastive_weight(torch.tensor(g), torch.tensor(ctr), lam).item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------ 4. truncation
def test_truncation_of_a_too_long_entry_under_both_rules(smol_tokenizer):
    tok = smol_tokenizer
    prompt, target = "Is this review positive? " + "very " * 40, "positive outcome"
    p_ids = tok(train_prompt(prompt))["input_ids"]
    t_ids = tok(target, add_special_tokens=False)["input_ids"]
    assert len(t_ids) >= 2
    cutoff = len(p_ids) + 1  # room for the first output token only
    ids, labels, cut = encode_pair(tok, prompt, target, cutoff, truncation="right")
    assert cut and ids == p_ids + t_ids[:1] and labels == [IGNORE] * len(p_ids) + t_ids[:1]
    ids, labels, cut = encode_pair(tok, prompt, target, len(p_ids) - 3, truncation="right")
    assert cut and ids == p_ids[:-3] and all(lab == IGNORE for lab in labels)  # the output is gone entirely
    ids, labels, cut = encode_pair(tok, prompt, target, cutoff, truncation="keep_target")
    assert cut and len(ids) == cutoff and ids[-len(t_ids):] == t_ids
    assert [lab for lab in labels if lab != IGNORE] == t_ids  # the whole output kept, the prompt's middle dropped
    assert tok.decode(ids).endswith("### Response:\n" + target)


def test_truncation_report_counts_what_each_rule_changes(smol_tokenizer):
    tok = smol_tokenizer
    long_prompt = "Is this review positive? " + "very " * 40
    rows = make_entries(2).to_list()
    rows[0]["prompt"] = long_prompt  # only the original of entry 0 is too long
    from datasets import Dataset

    data = Dataset.from_list(rows)
    cutoff = len(tok(train_prompt(long_prompt))["input_ids"]) - 2  # the prompt alone already overflows
    report = {r["rule"]: r for r in truncation_report(data, tok, cutoff)}
    assert report["right"] == {"rule": "right", "cutoff_len": cutoff, "entries": 2, "entries_changed": 1,
                               "sequences_changed": 1, "targets_shortened": 1, "targets_lost": 1}
    assert report["keep_target"] == {"rule": "keep_target", "cutoff_len": cutoff, "entries": 2,
                                     "entries_changed": 1, "sequences_changed": 1, "targets_shortened": 0,
                                     "targets_lost": 0}


def test_micro_batch_without_any_output_token_adds_nothing(tmp_path):
    batch, logits, hidden = _hand_batch()
    batch["labels"][:] = IGNORE  # right truncation cut every output away
    P = _params(tmp_path)
    trainer = train_mod.CoinTrainer(model=tiny_llama(vocab_size=8, seed=0), args=train_mod.training_arguments(P),
                                    train_dataset=make_entries(2), coin=P.train)
    loss = trainer.compute_loss(_Fixed(logits, hidden), batch)
    assert loss.item() == 0.0 and trainer._sums["weight"] == 0.0  # G = 0: the reference rescales L_ctr to 0


# ------------------------------------------------------------------------------------------ data order
@pytest.fixture(scope="module")
def built(mirror):
    pools = pairs.load_pools(["rte", "sst2", "cola", "wsc273"], mirror, 300, load_templates(mirror)).pools
    return pools, pairs.build_entries(pools, 120, seed=0)


def test_build_emits_consecutive_pairs_of_mutual_hard_negatives(built):
    pools, entries = built
    assert len(entries) == 120
    for a, b in zip(entries[0::2], entries[1::2]):
        assert a["task"] == b["task"] and a["template_id"] == b["template_id"]  # same instruction
        assert a["instance_id"] != b["instance_id"] and a["target"] != b["target"]  # other input and answer
        assert (a["neg_instance_id"], a["neg_prompt"], a["neg_target"]) == (b["instance_id"], b["prompt"], b["target"])
        assert (b["neg_instance_id"], b["neg_prompt"], b["neg_target"]) == (a["instance_id"], a["prompt"], a["target"])
    from datasets import Dataset

    check_mutual_pairs(Dataset.from_list(entries))
    assert pairs.build_entries(pools, 120, seed=0) == entries
    assert pairs.build_entries(pools, 120, seed=1) != entries


def test_build_is_byte_identical_for_the_same_seed(tmp_path):
    def params(root, seed=0):
        return validate({"run": {"name": "t", "output_root": str(root), "seed": seed},
                         "data": {"tasks": ["rte", "cola"], "size": 20}})

    for root in ("a", "b"):
        pairs.build(params(tmp_path / root), progress=False)
    a = (params(tmp_path / "a").data_dir / "entries.jsonl").read_bytes()
    assert a == (params(tmp_path / "b").data_dir / "entries.jsonl").read_bytes()
    pairs.build(params(tmp_path / "c", seed=1), progress=False)
    assert a != (params(tmp_path / "c", seed=1).data_dir / "entries.jsonl").read_bytes()


def test_reference_mode_trains_in_data_order_and_checks_the_pairs(tmp_path, smol_tokenizer):
    P = _params(tmp_path, batch_size=8)
    args = train_mod.training_arguments(P)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 4)
    enc = encode_entries(make_entries(10), smol_tokenizer, 64)
    trainer = train_mod.CoinTrainer(model=tiny_llama(vocab_size=len(smol_tokenizer), seed=0), args=args,
                                    train_dataset=enc, coin=P.train)
    sampler = trainer._get_train_sampler()
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert list(sampler) == list(range(10))  # sequential: never shuffled
    check_mutual_pairs(make_entries(10))
    with pytest.raises(ValueError, match="entries 2 and 3 are not"):
        check_mutual_pairs(make_entries(10).select([0, 1, 2, 4, 3, 5]))
    with pytest.raises(ValueError, match="odd number of entries"):
        check_mutual_pairs(make_entries(5))
    with pytest.raises(ValueError, match="exactly 2 entries.*micro_batch_pairs=4"):
        train_mod.training_arguments(_params(tmp_path, micro_batch_pairs=4, batch_size=8))
    with pytest.raises(ValueError, match="keeps the data order"):
        train_mod.training_arguments(_params(tmp_path, shuffle=True))


# ------------------------------------------------------------------------------------------ 7. seeded LoRA
def _lora_state(P) -> dict[str, torch.Tensor]:
    model, _ = train_mod.prepare_model(P)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_same_seed_gives_bitwise_identical_lora_init(tmp_path, smol_tokenizer):
    folder = tmp_path / "tiny"
    tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id, seed=0).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)

    def params(seed):
        return validate({"run": {"name": "lora", "output_root": str(tmp_path), "seed": seed},
                         "model": {"name": str(folder)}})

    torch.manual_seed(123)
    a = _lora_state(params(0))
    torch.rand(1000)  # whatever ran before must not matter
    b = _lora_state(params(0))
    c = _lora_state(params(1))
    assert a and a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "lora_A" in k)
