"""FLAN rendering, options block, template selection and the task adapters."""

from __future__ import annotations

import pytest

from coinlib.core.sources import read_jsonl
from coinlib.data import flan
from coinlib.data.flan import (
    ADAPTERS,
    Example,
    FlanError,
    MissingPlaceholderError,
    format_options,
    normalize_cap,
    options_from_tasks_py,
    render,
    render_example,
    templates_from_origin,
    usable_templates,
)


@pytest.fixture(scope="module")
def templates(mirror):
    return flan.load_templates(mirror)


def test_render_is_literal_single_pass_substitution():
    text = 'If "{premise}", then {hypothesis}? {premise}'
    out = render(text, {"premise": "a {hypothesis} b", "hypothesis": "H"})
    assert out == 'If "a {hypothesis} b", then H? a {hypothesis} b'  # values are not re-scanned
    assert render("no braces } { here", {}) == "no braces } { here"


def test_render_names_the_missing_placeholder():
    with pytest.raises(MissingPlaceholderError, match=r"\{title\}.*provides \['text'\]"):
        render("{title}\n\n{text}", {"text": "t"}, where="task ag template 0")


def test_options_block_matches_flan_format(mirror):
    from coinlib.core.sources import load_json_artifact

    doc = load_json_artifact("flan_templates", mirror)
    assert format_options(["yes", "no"]) == doc["options_suffix_format"]["example_rte"]
    assert format_options(["a"]) == "OPTIONS:\n- a"


def test_rte_template_renders_instance_and_options(templates):
    adapter = ADAPTERS["rte"]
    t = templates.templates("rte")[0]
    ex = adapter.example({"premise": "P.", "hypothesis": "H", "label": 1, "idx": 0}, templates.options["rte"], "x/0")
    prompt, target = render_example(t, ex)
    assert target == "no"
    assert prompt.startswith("P.") and "H" in prompt
    assert prompt.endswith("\n" + format_options(["yes", "no"]))


def test_usable_templates_keep_only_answer_targets(templates):
    for name, adapter in ADAPTERS.items():
        keep, dropped = usable_templates(adapter, templates)
        assert len(keep) + len(dropped) == 10, name
        assert len(keep) >= 2, name
        assert all(t.target in {"{answer}", "{answer_str}"} for t in keep), name
        assert all(d.reason for d in dropped)
    _, stsb = usable_templates(ADAPTERS["stsb"], templates)
    assert [d.template_id for d in stsb] == [8, 9]
    _, ag = usable_templates(ADAPTERS["ag_news_subset"], templates)
    reasons = {d.template_id: d.reason for d in ag}
    assert sorted(reasons) == [0, 1, 8, 9] and "{title}" in reasons[0]


def test_paws_template_without_options_is_kept_because_target_is_answer(templates):
    keep, _ = usable_templates(ADAPTERS["paws_wiki"], templates)
    assert any("{options_}" not in t.input for t in keep)


@pytest.mark.parametrize("task,row,answer", [
    ("trec", {"text": "Why?", "coarse_label": 2, "fine_label": 26}, "description"),  # hub DESC
    ("trec", {"text": "Where?", "coarse_label": 4, "fine_label": 0}, "location"),  # hub LOC
    ("sentiment140", {"text": "t", "date": "", "user": "", "sentiment": 4, "query": ""}, "positive"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.799999952316284, "idx": 0}, "4"),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 2.5, "idx": 0}, "2"),  # printf %.0f: half to even
    ("wic", {"word": "w", "sentence1": "a", "sentence2": "b", "label": 1}, "the same meaning"),
])
def test_adapter_answers(templates, task, row, answer):
    ex = ADAPTERS[task].example(row, templates.options[ADAPTERS[task].key], "x/0")
    assert ex.answer == answer and ex.fields["answer"] == answer


def test_adapter_text_fixes(templates):
    yelp = ADAPTERS["yelp_polarity_reviews"].example({"text": r'good\nfood \"" ok', "label": 1}, ["n", "p"], "y/0")
    assert yelp.fields["text"] == 'good food " ok'
    imdb = ADAPTERS["imdb_reviews"].example({"text": "a<br />b", "label": 0}, ["n", "p"], "i/0")
    assert imdb.fields["text"] == "a\nb"
    boolq = ADAPTERS["bool_q"].example({"question": "q", "passage": "Title -- body -- more", "idx": 0, "label": 1},
                                       ["no", "yes"], "b/0")
    assert (boolq.fields["title"], boolq.fields["text"], boolq.answer) == ("Title", "body -- more", "yes")
    assert ADAPTERS["snli"].example({"premise": "p", "hypothesis": "h", "label": -1}, ["a", "b", "c"], "s/0") is None


def test_wsc273_options_follow_pronoun_case(mirror):
    row = read_jsonl(mirror / "hf/ErnestSDavis__winograd_wsc/wsc273/test.jsonl")[0]
    ex = ADAPTERS["wsc273"].example(row, None, "w/0")
    suffix = row["text"][row["pronoun_loc"] + len(row["pronoun"]):].strip()
    assert ex.fields["context"] == row["text"][: row["pronoun_loc"]].strip()
    assert all(o.endswith(" " + suffix) for o in ex.options)
    assert ex.answer == ex.options[row["label"]]
    assert normalize_cap("The city", "they") == "the city" and normalize_cap("the dog", "He") == "The dog"


def test_adapter_errors_name_the_problem():
    with pytest.raises(FlanError, match="label 5 outside"):
        ADAPTERS["rte"].example({"premise": "p", "hypothesis": "h", "label": 5}, ["yes", "no"], "r/0")
    with pytest.raises(FlanError, match="no option texts"):
        ADAPTERS["rte"].example({"premise": "p", "hypothesis": "h", "label": 0}, None, "r/0")


def test_missing_field_in_example_raises_on_render(templates):
    t = templates.templates("rte")[0]
    ex = Example("r/0", {"premise": "p", "answer": "yes", "options_": "OPTIONS:\n- yes"}, ["yes"], "yes")
    with pytest.raises(MissingPlaceholderError, match=r"\{hypothesis\}"):
        render_example(t, ex, "rte")


def test_online_form_options_parsed_without_executing():
    # A synthetic stand-in shaped like FLAN's tasks.py: parsed with ast, never executed.
    source = (
        "import tensorflow as tf\n"
        "def _process_boolq(example):\n  options = tf.constant(['no', 'yes'])\n  return {}\n"
        "def _process_trec(example):\n  options = tf.constant(\n      ['description', 'entity'])\n  return {}\n"
        "TASK_CONFIGS['bool_q'] = _TaskConfig(source=None, preprocessors=[_process_boolq, fmt])\n"
        "raise SystemExit('must not run')\n"
    )
    opts = options_from_tasks_py(source)
    assert opts["bool_q"] == ["no", "yes"] and opts["trec"] == ["description", "entity"]
    flan_t = templates_from_origin({"bool_q": [("{text} {question}?\n{options_}", "{answer}")]}, source, "origin")
    assert flan_t.options["bool_q"] == ["no", "yes"]
    assert flan_t.templates("bool_q")[0].target == "{answer}"
    with pytest.raises(FlanError, match="no FLAN templates under key 'cola'"):
        flan_t.templates("cola")


def test_load_templates_online_form(monkeypatch):
    source = "def _process_cola(example):\n  options = tf.constant(['unacceptable', 'acceptable'])\n"
    doc = {"source": "FLAN@pinned", "origin": {"cola": [('Sentence: "{sentence}"\n{options_}', "{answer}")] * 2}}
    monkeypatch.setattr(flan, "load_json_artifact", lambda name, mirror: doc)
    monkeypatch.setattr(flan, "fetch_text", lambda origin: source)
    got = flan.load_templates("hub")
    assert got.options["cola"] == ["unacceptable", "acceptable"] and got.source == "FLAN@pinned"
    ex = ADAPTERS["cola"].example({"sentence": "S", "label": 1, "idx": 0}, got.options["cola"], "c/0")
    assert render_example(got.templates("cola")[0], ex) == ('Sentence: "S"\nOPTIONS:\n- unacceptable\n- acceptable',
                                                          "acceptable")

    def offline(origin):
        raise OSError("unreachable")

    monkeypatch.setattr(flan, "fetch_text", offline)
    assert flan.load_templates("hub").options["cola"] is None  # then adapters raise "no option texts"
