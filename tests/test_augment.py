"""Perturbed templates as extra training positives (coinlib.data.augment and the data.extra_positive_levels hook)."""

from __future__ import annotations

import re

import pytest

from coinlib.core.params import ParamsError, validate
from coinlib.data import pairs
from coinlib.data.augment import add_perturbed_positives
from coinlib.data.flan import load_templates

WORD_RE = re.compile(r"[A-Za-z]+(?:_[A-Za-z]+)*")


@pytest.fixture(scope="module")
def pools(mirror):
    return pairs.load_pools(["rte", "sst2"], mirror, 300, load_templates(mirror)).pools


@pytest.fixture(scope="module")
def entries(pools):
    return pairs.build_entries(pools, 12, seed=0)


def test_extra_rows_perturb_only_the_instruction(pools, entries):
    out = add_perturbed_positives(entries, pools, ["character", "sentence"], seed=0)
    extra = [e for e in out if e["pos_template_id"] == e["template_id"]]
    assert len(out) == len(entries) + len(extra) and len(extra) >= len(entries)  # sentence level always changes
    assert [e["entry_id"] for e in out] == list(range(len(out)))
    assert not any(e["pos_template_id"] == e["template_id"] for e in entries)
    examples = {p.name: {x.instance_id: x for x in p.examples} for p in pools}
    for e in extra:
        x = examples[e["task"]][e["instance_id"]]
        assert e["pos_prompt"] != e["prompt"]
        for name, value in x.fields.items():  # the instance is rendered verbatim: only the template changed
            if value and value in e["prompt"]:
                assert value in e["pos_prompt"], (name, e["pos_prompt"])
        for option in x.options:
            assert option in e["pos_prompt"]
        original = next(o for o in entries if o["instance_id"] == e["instance_id"] and o["task"] == e["task"])
        assert {k: v for k, v in e.items() if k not in ("entry_id", "pos_prompt", "pos_template_id")} == \
               {k: v for k, v in original.items() if k not in ("entry_id", "pos_prompt", "pos_template_id")}


def test_character_extra_positive_stays_within_budget(pools, entries):
    out = add_perturbed_positives(entries, pools, ["character"], seed=0, budget=2)
    for e in (r for r in out if r["pos_template_id"] == r["template_id"]):
        a, b = WORD_RE.findall(e["prompt"]), WORD_RE.findall(e["pos_prompt"])
        assert len(a) == len(b) and 1 <= sum(x != y for x, y in zip(a, b)) <= 2


def test_extra_positives_are_deterministic_and_optional(pools, entries):
    a = add_perturbed_positives(entries, pools, ["character"], seed=0)
    assert a == add_perturbed_positives(entries, pools, ["character"], seed=0)
    assert a != add_perturbed_positives(entries, pools, ["character"], seed=1)
    assert add_perturbed_positives(entries, pools, [], seed=0) == entries
    with pytest.raises(ValueError, match="choose from"):
        add_perturbed_positives(entries, pools, ["paragraph"])


def test_data_build_hook_adds_rows(tmp_path):
    P = validate({"run": {"name": "t", "output_root": str(tmp_path), "seed": 0},
                  "data": {"tasks": ["rte", "cola"], "size": 10, "extra_positive_levels": ["sentence"]}})
    ds = pairs.build(P, progress=False)
    assert ds.num_rows == 20 and set(pairs.COLUMNS) <= set(ds.column_names)
    extra = ds.filter(lambda r: r["pos_template_id"] == r["template_id"])
    assert extra.num_rows == 10 and all(p != q for p, q in zip(extra["prompt"], extra["pos_prompt"]))
    with pytest.raises(ParamsError, match="extra_positive_levels"):
        validate({"run": {"name": "t"}, "model": {"name": "x"}, "data": {"extra_positive_levels": ["paragraph"]}})
