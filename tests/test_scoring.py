"""Scoring: label parsing edge cases, prefix splitting, batched generate == one-at-a-time, rank == separate scoring."""

from __future__ import annotations

import json

import pytest
import torch

from coinlib.evaluate.scoring import (
    answer_decided,
    encode,
    format_input,
    generate_batch,
    label_continuation,
    label_token_ids,
    length_sorted_batches,
    packed_rows,
    parse_label,
    plain_greedy,
    rank_batch,
    rank_plan,
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


@pytest.mark.parametrize("labels, text, expected", [
    (("unacceptable", "acceptable"), "Unacceptable.", "unacceptable"),      # "acceptable" is inside, not a prefix
    (("unacceptable", "acceptable"), " acceptable!\n\nThe sentence", "acceptable"),
    (("unacceptable", "acceptable"), "(Acceptable)", "acceptable"),
    (("unacceptable", "acceptable"), "un-acceptable", ""),
    (("not_equivalent", "equivalent"), "\"Not_equivalent\"", "not_equivalent"),
    (("not_equivalent", "equivalent"), "equivalent, not not_equivalent", "equivalent"),
    (("not_equivalent", "equivalent"), "not equivalent", ""),
    (("entailment", "neutral", "contradiction"), "\tNEUTRAL\n", "neutral"),
    (("entailment", "neutral", "contradiction"), "- contradiction -", "contradiction"),
    (("entailment", "neutral", "contradiction"), "contra", ""),
    (("entailment", "neutral", "contradiction"), "Neither", ""),
    (("negative", "positive"), "Positive: positive\n\nThis is", "positive"),  # a real SmolLM2 answer
    (("negative", "positive"), "The sentiment of the excerpt is positive", ""),  # also real: no label first
])
def test_parse_task_label_words(labels, text, expected):
    assert parse_label(text, labels) == expected


def test_parse_prefers_the_longer_label_word():
    assert parse_label("yes_and more", ("yes", "yes_and")) == "yes_and"
    assert parse_label("yes, and", ("yes", "yes_and")) == "yes"


# Raw outputs scored per task as the reference scores them (promptbench/config.py and inference.py of
# luka-group/CoIN): lowercase, strip punctuation and spaces, first accepted answer the text starts with, else
# unparseable (""). SST-2, QNLI, RTE and WNLI accept the label ids' digits; WNLI's "1" is entailment.
RAW = ["Positive.", "0", "1", " not_entailment", "neutral!", "", "Equivalent", "unacceptable", "10", "2"]
PARSED = {  # one column per RAW entry, written by hand
    "sst2": ["positive", "negative", "positive", "", "", "", "", "", "positive", ""],
    "cola": ["", "", "", "", "", "", "", "unacceptable", "", ""],
    "mnli": ["", "", "", "", "neutral", "", "", "", "", ""],
    "mnli_matched": ["", "", "", "", "neutral", "", "", "", "", ""],
    "mnli_mismatched": ["", "", "", "", "neutral", "", "", "", "", ""],
    "mrpc": ["", "", "", "", "", "", "equivalent", "", "", ""],
    "qqp": ["", "", "", "", "", "", "equivalent", "", "", ""],
    "qnli": ["", "entailment", "not_entailment", "not_entailment", "", "", "", "", "not_entailment", ""],
    "rte": ["", "entailment", "not_entailment", "not_entailment", "", "", "", "", "not_entailment", ""],
    "wnli": ["", "not_entailment", "entailment", "not_entailment", "", "", "", "", "entailment", ""],
}


@pytest.mark.parametrize("task", sorted(PARSED))
def test_parse_per_task_as_the_reference(task):
    from coinlib.core.tasks import get_task

    assert [parse_label(raw, get_task(task)) for raw in RAW] == PARSED[task]


def test_parse_deletes_the_references_markers_and_waits_for_them():
    from coinlib.core.tasks import get_task

    sst2 = get_task("sst2")
    assert parse_label("</s>Positive<pad>", sst2) == "positive"
    assert answer_decided("0", sst2) and not answer_decided(" ", sst2)
    assert not answer_decided("posi<", sst2)  # "<" may start "<pad>", whose deletion would complete "positive"
    assert answer_decided("posix", sst2)


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


# Early stopping on a model that emits label words. Attention and MLP outputs are zeroed, so the final hidden state
# at a position is the (normed) embedding of its token: the model is a bigram table. Source tokens get orthogonal
# embeddings and the untied lm_head maps each to its successor, so greedy decoding follows these chains exactly.
CHAINS = {  # row -> greedy continuation of its start token (the fixture builds the bigram table from these)
    "A": [" not", "_", "ent", "ail", "ment", " because", " it"],
    "B": [" entail", "ment", " because", " it", " rains", ".", " maybe"],
    "C": [" The", " answer", " because", " it", " rains", ".", " maybe"],
    "D": [" Not", "_", "ent", "ail", "ment", " because", " it"],
}
# (raw output after 7 tokens, raw output with early stop, parsed label): worked out by hand from CHAINS
EXPECTED = {
    "A": (" not_entailment because it", " not_entailment", "not_entailment"),
    "B": (" entailment because it rains. maybe", " entailment", "entailment"),
    "C": (" The answer because it rains. maybe", " The", ""),  # " The" cannot start a label word: decided at once
    "D": (" Not_entailment because it", " Not_entailment", "not_entailment"),
    "E": ("", "", ""),  # EOS first
}


@pytest.fixture()
def bigram_model(smol_tokenizer):
    """A tiny Llama that continues token ``start[row]`` with ``CHAINS[row]`` (row E: EOS at once); returns the
    model and the start token of each row."""
    from coinlib.core.models import tiny_llama

    tok = smol_tokenizer
    model = tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, seed=0).eval()
    one = {s: tok(s, add_special_tokens=False)["input_ids"] for c in CHAINS.values() for s in c}
    assert all(len(ids) == 1 for ids in one.values())  # each chain step is one token
    starts = tok(" alpha beta gamma delta epsilon", add_special_tokens=False)["input_ids"]
    assert len(starts) == 5
    start = dict(zip("ABCDE", starts))
    nxt = {start[r]: one[c[0]][0] for r, c in CHAINS.items()} | {start["E"]: tok.eos_token_id}
    for c in CHAINS.values():
        nxt.update({one[a][0]: one[b][0] for a, b in zip(c, c[1:])})
    d = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head = torch.nn.Linear(d, len(tok), bias=False)
        model.lm_head.weight.zero_()
        model.config.tie_word_embeddings = False
        for k, (src, dst) in enumerate(nxt.items()):
            model.model.embed_tokens.weight[src] = torch.nn.functional.one_hot(torch.tensor(k), d).float()
            model.lm_head.weight[dst, k] = 1.0
    return model, start


@pytest.mark.parametrize("early_stop", [False, True])
def test_early_stop_on_a_model_that_emits_label_words(bigram_model, smol_tokenizer, early_stop):
    model, start = bigram_model
    rows = "ABCDE"
    filler = smol_tokenizer(" so it goes", add_special_tokens=False)["input_ids"]
    suffixes = [filler[:i % 3] + [start[r]] for i, r in enumerate(rows)]  # different lengths: left padding
    got = generate_batch(model, smol_tokenizer, [], None, suffixes, NLI, max_new_tokens=7, early_stop=early_stop)
    assert got == [EXPECTED[r][1 if early_stop else 0] for r in rows]
    assert [parse_label(g, NLI) for g in got] == [EXPECTED[r][2] for r in rows]
    if not early_stop:  # the reference: model.generate on each input alone
        ref = [smol_tokenizer.decode(model.generate(torch.tensor([s]), max_new_tokens=7, do_sample=False,
                                                    pad_token_id=smol_tokenizer.pad_token_id)[0, len(s):],
                                     skip_special_tokens=True) for s in suffixes]
        assert got == ref


def test_score_instruction_early_stop_keeps_predictions_of_a_model_that_emits_label_words(bigram_model, smol_tokenizer):
    model, start = bigram_model
    # paper format: every input ends in "Response:", so map ":" like row A's start token
    colon = smol_tokenizer(":", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        model.model.embed_tokens.weight[colon] = model.model.embed_tokens.weight[start["A"]]
    kwargs = dict(fmt="paper", mode="generate", batch_size=3)
    full = score_instruction(model, smol_tokenizer, INSTRUCTION, CONTENTS, NLI, early_stop=False, **kwargs)
    early = score_instruction(model, smol_tokenizer, INSTRUCTION, CONTENTS, NLI, early_stop=True, **kwargs)
    assert [f.raw_output for f in full] == [EXPECTED["A"][0]] * 4
    assert [e.raw_output for e in early] == [EXPECTED["A"][1]] * 4
    assert [e.prediction for e in early] == [f.prediction for f in full] == ["not_entailment"] * 4


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
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, contents[i], lab, fmt) for lab in labels]
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
        expected = [_separate_log_likelihood(tiny_model, smol_tokenizer, content, lab, "paper") for lab in NLI]
        scores = json.loads(result.label_scores)
        assert [scores[lab] for lab in NLI] == pytest.approx(expected, abs=2e-3)
        assert result.prediction == NLI[max(range(2), key=expected.__getitem__)]


@pytest.fixture(scope="module")
def smollm2():
    from coinlib.core.models import load_model
    from coinlib.core.params import ModelParams

    model, tok = load_model(ModelParams(name="smollm2-135m-instruct"))
    return model.eval(), tok


def _sst2(mirror, n):
    from coinlib.core.promptsets import load_prompt_set
    from coinlib.core.tasks import get_task, load_task

    instruction = load_prompt_set("coin_eval_prompts", mirror)["clean"]["sst2"][0]
    return instruction, load_task("sst2", n, mirror)["content"].tolist(), get_task("sst2").labels


@pytest.mark.slow
def test_real_model_batched_generate_equals_plain_loop(smollm2, mirror):
    """SmolLM2 (chat template, the format where it answers with label words): batched == one at a time."""
    model, tok = smollm2
    instruction, contents, labels = _sst2(mirror, 4)
    got = score_instruction(model, tok, instruction, contents, labels, "chat", "generate", batch_size=3,
                            early_stop=False)
    plain = [plain_greedy(model, tok, format_input(instruction, c, "chat", tok), "chat") for c in contents]
    assert [g.raw_output for g in got] == plain


@pytest.mark.slow
def test_real_model_early_stop_cuts_text_not_predictions(smollm2, mirror):
    """SmolLM2 on sst2: early stopping shortens the raw outputs (most start "The ...", decided at once) and keeps
    every prediction, including a label word answer."""
    model, tok = smollm2
    instruction, contents, labels = _sst2(mirror, 6)
    kwargs = dict(fmt="chat", mode="generate", batch_size=3)
    full = score_instruction(model, tok, instruction, contents, labels, early_stop=False, **kwargs)
    early = score_instruction(model, tok, instruction, contents, labels, early_stop=True, **kwargs)
    assert [e.prediction for e in early] == [f.prediction for f in full]
    assert "positive" in [e.prediction for e in early]
    assert all(f.raw_output.startswith(e.raw_output) for e, f in zip(early, full))
    assert sum(len(e.raw_output) < len(f.raw_output) for e, f in zip(early, full)) >= 5
