"""Scoring: label parsing edge cases, prefix splitting, batched generate == one-at-a-time, rank == separate scoring."""

from __future__ import annotations

import json

import pytest
import torch

from coinlib.evaluate.scoring import (
    answer_decided,
    encode,
    format_input,
    label_continuation,
    length_sorted_batches,
    packed_rows,
    rank_batch,
    rank_plan,
    parse_label,
    plain_greedy,
    score_instruction,
)

NLI = ("entailment", "not_entailment")
CONTENTS = ["Sentence 1: A man plays. Sentence 2: Someone plays.", "Sentence 1: Cats. Sentence 2: Dogs bark loudly.",
            "Sentence 1: It rains today in the north of the country. Sentence 2: It is dry.", "Sentence 1: x Sentence 2: y"]
INSTRUCTION = "Are the following two sentences entailment or not_entailment? Answer me with one word. "


@pytest.mark.parametrize("text, expected", [
    ("  Positive.\n", "positive"),          # whitespace and punctuation around, capitalised
    ("NEGATIVE sentiment", "negative"),
    ("'positive'", "positive"),            # quotes stripped
    ("", ""),                               # empty output
    ("   \n", ""),
    ("The answer is positive", ""),        # does not start with a label word: unparseable
    ("pos", ""),                            # unfinished label word
])
def test_parse_sentiment(text, expected):
    assert parse_label(text, ("negative", "positive")) == expected


@pytest.mark.parametrize("text, expected", [
    ("not_entailment", "not_entailment"),   # begins with the other label's prefix "not_"...
    (" Not_Entailment.", "not_entailment"),
    ("entailment", "entailment"),
    ("entailment, not not_entailment", "entailment"),
    ("not entailment", ""),                 # the paper's parser needs the exact label word
    ("_entailment", "entailment"),          # leading "_" is stripped like the paper's code does
])
def test_parse_nli_prefixes(text, expected):
    assert parse_label(text, NLI) == expected
    assert parse_label(text, tuple(reversed(NLI))) == expected  # label order does not matter


def test_parse_prefers_the_longer_label_word():
    assert parse_label("yes_and more", ("yes", "yes_and")) == "yes_and"
    assert parse_label("yes, and", ("yes", "yes_and")) == "yes"


@pytest.mark.parametrize("text, decided", [
    ("", False), ("\n\n", False), ("not_", False), ("Entail", False),
    ("entailment", True), ("not_entailment", True), ("The", True), ("no", False), ("nope", True),
])
def test_answer_decided(text, decided):
    assert answer_decided(text, NLI) is decided


def test_formats(smol_tokenizer):
    assert format_input("Do X: ", "C", "paper") == "Do X: C### Response:"
    assert format_input("Do X: ", "C", "train") == "Do X: C\n\n### Response:\n"
    chat = format_input("Do X: ", "C", "chat", smol_tokenizer)
    assert "Do X: C" in chat and chat.endswith("assistant\n")
    assert label_continuation("positive", "paper") == " positive" and label_continuation("positive", "chat") == "positive"
    with pytest.raises(ValueError, match="chat template"):
        format_input("Do X: ", "C", "chat", None)


def test_encode_splits_the_shared_prefix(smol_tokenizer):
    texts = [format_input(INSTRUCTION, c, "chat", smol_tokenizer) for c in CONTENTS]
    enc = encode(smol_tokenizer, texts, "chat")
    full = smol_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert len(enc.prefix) > 20
    assert all(enc.prefix + s == f for s, f in zip(enc.suffixes, full))
    same = encode(smol_tokenizer, ["abc", "abc"], "paper")  # identical inputs still keep one suffix token
    assert all(len(s) == 1 for s in same.suffixes)


def test_length_sorted_batches():
    batches = length_sorted_batches([3, 9, 1, 7, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert sorted(i for b in batches for i in b) == list(range(5))


@pytest.mark.parametrize("fmt", ["paper", "chat"])
def test_batched_generate_equals_one_at_a_time(tiny_model, smol_tokenizer, fmt):
    tiny_model.eval()
    got = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, CONTENTS, NLI, fmt, "generate", batch_size=3,
                            early_stop=False)
    texts = [format_input(INSTRUCTION, c, fmt, smol_tokenizer) for c in CONTENTS]
    plain = [plain_greedy(tiny_model, smol_tokenizer, t, fmt) for t in texts]
    assert [g.raw_output for g in got] == plain
    assert [g.prediction for g in got] == [parse_label(p, NLI) for p in plain]


def test_early_stop_keeps_predictions(tiny_model, smol_tokenizer):
    tiny_model.eval()
    kwargs = dict(fmt="paper", mode="generate", batch_size=2)
    full = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, CONTENTS, NLI, early_stop=False, **kwargs)
    early = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, CONTENTS, NLI, early_stop=True, **kwargs)
    assert [e.prediction for e in early] == [f.prediction for f in full]
    assert all(f.raw_output.startswith(e.raw_output) for e, f in zip(early, full))


def _separate_log_likelihood(model, tok, text: str, continuation: str, fmt: str) -> float:
    ids = tok(text, add_special_tokens=fmt != "chat")["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids + cont])).logits[0].float(), -1)
    return sum(logprobs[len(ids) - 1 + t, c].item() for t, c in enumerate(cont))


@pytest.mark.parametrize("fmt", ["paper", "chat"])
def test_rank_equals_separate_scoring(tiny_model, smol_tokenizer, fmt):
    tiny_model.eval()
    labels = ("entailment", "neutral", "contradiction")
    got = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, CONTENTS, labels, fmt, "rank", batch_size=3)
    for content, result in zip(CONTENTS, got):
        text = format_input(INSTRUCTION, content, fmt, smol_tokenizer)
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, text, label_continuation(lab, fmt), fmt)
                    for lab in labels]
        scores = json.loads(result.label_scores)
        assert [scores[lab] for lab in labels] == pytest.approx(expected, abs=2e-3)
        assert result.prediction == labels[max(range(3), key=expected.__getitem__)]


def test_packed_rows_balance_totals():
    # by hand: 9->r0, 7->r1, 5->r2, 3->r2 (8), 2->r1 (9), 1->r0 (10, the only room left); longest row first
    assert packed_rows([9, 1, 7, 3, 5, 2], 2) == [[0, 1], [2, 5], [4, 3]]
    assert packed_rows([4, 4, 4], 1) == [[0], [1], [2]]
    assert packed_rows([5, 1, 1, 1, 1], 4) == [[0], [1, 2, 3, 4]]  # the 1s fill the emptier row: totals 5 and 4


def test_rank_plan_packs_only_when_it_pays():
    uniform = rank_plan([20] * 8, cont_len=3, rows_per_pass=4, prefix_len=10, keys_per_token=50.0)
    assert all(len(row) == 1 for p in uniform for row in p)  # no padding to remove, attention is dear
    varied = [40, 3, 5, 38, 4, 6, 2, 39]
    plan = rank_plan(varied, cont_len=3, rows_per_pass=4, prefix_len=10, keys_per_token=1e9)
    assert max(len(row) for p in plan for row in p) > 1  # attention free: short inputs share rows
    assert sorted(i for p in plan for row in p for i in row) == list(range(8))
    assert all(len(p) <= 4 for p in plan)


@pytest.mark.parametrize("fmt", ["paper", "chat"])
def test_packed_rank_rows_equal_separate_scoring(tiny_model, smol_tokenizer, fmt):
    """Several instances of different lengths in one row score as if each were run alone."""
    tiny_model.eval()
    labels = ("entailment", "neutral", "contradiction")
    contents = CONTENTS + ["Sentence 1: A much longer first sentence about the weather in the hills. Sentence 2: Rain."]
    texts = [format_input(INSTRUCTION, c, fmt, smol_tokenizer) for c in contents]
    enc = encode(smol_tokenizer, texts, fmt)
    conts = [smol_tokenizer(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"] for lab in labels]
    with torch.no_grad():
        cache = tiny_model(input_ids=torch.tensor([enc.prefix]), use_cache=True).past_key_values
    rows = [[0, 2], [4], [1, 3]]
    got = rank_batch(tiny_model, len(enc.prefix), cache, enc.suffixes, conts, smol_tokenizer.pad_token_id, rows)
    assert got.shape == (5, 3)
    for r, i in enumerate([0, 2, 4, 1, 3]):  # results in row order
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, texts[i], label_continuation(lab, fmt), fmt)
                    for lab in labels]
        assert got[r].tolist() == pytest.approx(expected, abs=2e-3)


def test_score_instruction_rank_with_packing_equals_separate_scoring(tiny_model, smol_tokenizer, monkeypatch):
    from coinlib.evaluate import scoring

    tiny_model.eval()
    monkeypatch.setattr(scoring, "keys_per_token", lambda model: 1e9)  # attention free: the plan packs rows
    plans = []
    real_plan = scoring.rank_plan
    monkeypatch.setattr(scoring, "rank_plan", lambda *a: plans.append(real_plan(*a)) or plans[-1])
    contents = CONTENTS + ["Sentence 1: " + "word " * 30 + "Sentence 2: Short.", "Sentence 1: Hi. Sentence 2: Yo."]
    got = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, contents, NLI, "paper", "rank", batch_size=2)
    assert max(len(row) for p in plans[0] for row in p) > 1
    for content, result in zip(contents, got):
        text = format_input(INSTRUCTION, content, "paper", smol_tokenizer)
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, text, label_continuation(lab, "paper"),
                                             "paper") for lab in NLI]
        scores = json.loads(result.label_scores)
        assert [scores[lab] for lab in NLI] == pytest.approx(expected, abs=2e-3)
        assert result.prediction == NLI[max(range(2), key=expected.__getitem__)]


@pytest.mark.slow
def test_real_model_batched_generate_equals_plain_loop(mirror):
    """SmolLM2 (chat template, the format where it answers with label words): batched == one at a time."""
    from coinlib.core.models import load_model
    from coinlib.core.params import ModelParams
    from coinlib.core.promptsets import load_prompt_set
    from coinlib.core.tasks import get_task, load_task

    model, tok = load_model(ModelParams(name="smollm2-135m-instruct"))
    model.eval()
    instruction = load_prompt_set("coin_eval_prompts", mirror)["clean"]["sst2"][0]
    contents = load_task("sst2", 4, mirror)["content"].tolist()
    labels = get_task("sst2").labels
    got = score_instruction(model, tok, instruction, contents, labels, "chat", "generate", batch_size=3,
                            early_stop=False)
    plain = [plain_greedy(model, tok, format_input(instruction, c, "chat", tok), "chat") for c in contents]
    assert [g.raw_output for g in got] == plain
    assert [g.prediction for g in got] == [parse_label(p, labels) for p in plain]
