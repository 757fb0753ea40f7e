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
    label_token_ids,
    length_sorted_batches,
    parse_label,
    plain_greedy,
    score_instruction,
)
from coinlib.train.batching import IGNORE, encode_pair

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


def _separate_log_likelihood(model, tok, content: str, label: str, fmt: str) -> float:
    """Summed log-probability of the label's tokens, one sequence at a time; in the ``train`` format the sequence
    and its target tokens come from the training encoder itself."""
    if fmt == "train":
        ids, targets, _ = encode_pair(tok, INSTRUCTION + content, label, cutoff_len=4096)
        positions = [t for t, lab in enumerate(targets) if lab != IGNORE]
    else:
        prompt = tok(format_input(INSTRUCTION, content, fmt, tok), add_special_tokens=fmt != "chat")["input_ids"]
        cont = tok(label_continuation(label, fmt), add_special_tokens=False)["input_ids"]
        ids, positions = prompt + cont, list(range(len(prompt), len(prompt) + len(cont)))
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(logprobs[t - 1, ids[t]].item() for t in positions)


@pytest.mark.parametrize("fmt", ["paper", "train", "chat"])
def test_rank_equals_separate_scoring(tiny_model, smol_tokenizer, fmt):
    tiny_model.eval()
    labels = ("entailment", "neutral", "contradiction")
    got = score_instruction(tiny_model, smol_tokenizer, INSTRUCTION, CONTENTS, labels, fmt, "rank", batch_size=3)
    for content, result in zip(CONTENTS, got):
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, content, lab, fmt) for lab in labels]
        scores = json.loads(result.label_scores)
        assert [scores[lab] for lab in labels] == pytest.approx(expected, abs=2e-3)
        assert result.prediction == labels[max(range(3), key=expected.__getitem__)]
        n_tokens = {lab: len(smol_tokenizer(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"])
                    for lab in labels}
        assert json.loads(result.label_tokens) == n_tokens


@pytest.mark.parametrize("append_eos", [False, True])
@pytest.mark.parametrize("labels", [("negative", "positive"), ("entailment", "not_entailment"),
                                    ("entailment", "neutral", "contradiction")])
def test_train_format_scores_exactly_the_tokens_training_teaches(smol_tokenizer, labels, append_eos):
    """The rank-scored sequence (shared prefix + suffix + label tokens) of the train format is the training sequence
    token for token, and the scored label tokens are exactly the tokens training computes its loss on."""
    texts = [format_input(INSTRUCTION, c, "train") for c in CONTENTS]
    enc = encode(smol_tokenizer, texts, "train")
    scored = label_token_ids(smol_tokenizer, labels, "train", append_eos)
    for content, suffix in zip(CONTENTS, enc.suffixes):
        for label, cont in zip(labels, scored):
            ids, targets, truncated = encode_pair(smol_tokenizer, INSTRUCTION + content, label, cutoff_len=4096,
                                                  append_eos=append_eos)
            assert not truncated
            assert enc.prefix + suffix + cont == ids
            assert cont == [t for t in targets if t != IGNORE]
            assert (cont[-1] == smol_tokenizer.eos_token_id) == append_eos


def test_paper_format_scores_the_next_word_after_the_colon(smol_tokenizer):
    """The paper's input ends with "### Response:" (no newline), so the label is scored as the next word, " label":
    a different token than the training target (no space, after a newline), which is why both formats are reported."""
    paper = label_token_ids(smol_tokenizer, ("positive",), "paper")[0]
    train = label_token_ids(smol_tokenizer, ("positive",), "train")[0]
    assert smol_tokenizer.convert_ids_to_tokens(paper) == ["\u0120positive"]  # "Ġ": the leading space
    assert smol_tokenizer.convert_ids_to_tokens(train) == ["positive"]
    assert label_token_ids(smol_tokenizer, ("positive",), "train", append_eos=True)[0] == train + [
        smol_tokenizer.eos_token_id]
    assert label_token_ids(smol_tokenizer, ("positive",), "chat")[0] == train


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
