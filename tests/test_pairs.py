"""Contrastive entries: pair invariants, round-robin, determinism, holdout, leakage guard and bad input."""

from __future__ import annotations

import json

import pytest

from coinlib.core.params import validate
from coinlib.core.tasks import sample_indices
from coinlib.data import pairs
from coinlib.data.flan import load_templates, render

TASKS = ["rte", "sst2", "trec", "wsc273", "stsb"]


@pytest.fixture(scope="module")
def flan_templates(mirror):
    return load_templates(mirror)


@pytest.fixture(scope="module")
def pools(mirror, flan_templates):
    return pairs.load_pools(TASKS, mirror, 300, flan_templates)


@pytest.fixture(scope="module")
def entries(pools):
    return pairs.build_entries(pools.pools, 250, seed=0)


def _examples(pools):
    return {p.name: {e.instance_id: e for e in p.examples} for p in pools.pools}


def _templates(pools):
    return {p.name: {t.template_id: t for t in p.templates} for p in pools.pools}


def test_pair_invariants(pools, entries):
    examples, templates = _examples(pools), _templates(pools)
    for e in entries:
        x, x_neg = examples[e["task"]][e["instance_id"]], examples[e["task"]][e["neg_instance_id"]]
        t, t_pos = templates[e["task"]][e["template_id"]], templates[e["task"]][e["pos_template_id"]]
        # positive: same input and output, another template
        assert e["pos_template_id"] != e["template_id"]
        assert e["pos_prompt"] == render(t_pos.input, x.fields) and render(t_pos.target, x.fields) == e["target"]
        assert e["pos_prompt"] != e["prompt"]
        # negative: same template, another instance with another output
        assert e["neg_instance_id"] != e["instance_id"] and e["neg_target"] != e["target"]
        assert e["neg_prompt"] == render(t.input, x_neg.fields) and e["neg_prompt"] != e["prompt"]
        assert e["prompt"] == render(t.input, x.fields) and e["target"] == x.answer == render(t.target, x.fields)
        assert e["target"] in e["options"]


def test_round_robin_and_traceable_ids(pools, entries):
    names = [p.name for p in pools.pools]
    assert [e["task"] for e in entries[: 6 * len(names)]] == [n for n in names for _ in "ab"] * 3  # a pair per visit
    assert [e["entry_id"] for e in entries] == list(range(len(entries)))
    assert all(e["instance_id"].startswith(("super_glue/", "glue/", "trec/", "winograd_wsc/")) for e in entries)


def test_same_seed_same_entries_other_seed_differs(pools, entries):
    assert pairs.build_entries(pools.pools, 250, seed=0) == entries
    assert pairs.build_entries(pools.pools, 250, seed=1) != entries


def test_exhaustion_replacement_and_caps(pools):
    wsc = [p for p in pools.pools if p.name == "wsc273"]
    n = len(wsc[0].examples)
    size = n + 51 if n % 2 else n + 50
    no_repl = pairs.build_entries(wsc, size, seed=0)
    used = {e["instance_id"] for e in no_repl}
    assert len(used) == len(no_repl) and len(no_repl) % 2 == 0 and len(no_repl) >= n - 3  # each instance once
    left = {x.answer for x in wsc[0].examples if x.instance_id not in used}
    assert len(left) <= 1  # it stops only when the unused instances cannot form a pair
    assert len(pairs.build_entries(wsc, size, seed=0, replacement=True)) == size
    for cap, expected in ((3, 2), (4, 4)):  # pairs only: an odd cap stops one entry short
        capped = pairs.build_entries(pools.pools, 1000, seed=0, caps={"wsc273": cap})
        assert sum(e["task"] == "wsc273" for e in capped) == expected
    with pytest.raises(pairs.DataError, match="data.size=7 is odd.*even size such as 8"):
        pairs.build_entries(wsc, 7, seed=0)


def test_eval_holdout_and_named_skips(mirror, flan_templates):
    got = pairs.load_pools(["qnli", "qqp", "anli_r1"], mirror, 300, flan_templates)
    qnli = got.pools[0]
    held = {f"glue/qnli/validation/{i}" for i in sample_indices(5463, 300)}
    assert qnli.held_out == 300 and not held & {e.instance_id for e in qnli.examples}
    skips = {s.task: s.reason for s in got.skips}
    assert set(skips) == {"glue_qqp", "anli_r1"}
    assert "39 evaluation rows held out" in skips["glue_qqp"] and "facebook/anli" in skips["anli_r1"]


def test_unknown_task_names_suggest(flan_templates):
    with pytest.raises(pairs.DataError, match="unknown task 'sst'.*Did you mean sst2"):
        pairs.resolve_tasks(["sst"])
    assert pairs.resolve_tasks(["mnli", "all"])[:3] == ["anli_r1", "anli_r2", "anli_r3"]
    assert pairs.resolve_tasks(["mrpc", "cola"]) == ["glue_mrpc", "cola"]


def _mini_mirror(tmp_path, rows):
    path = tmp_path / "hf" / "nyu-mll__glue" / "sst2" / "train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def test_single_output_task_is_an_error(tmp_path, flan_templates):
    root = _mini_mirror(tmp_path, [{"sentence": f"s{i}", "label": 1, "idx": i} for i in range(5)])
    with pytest.raises(pairs.DataError, match="output 'positive'; a hard negative needs another output"):
        pairs.load_pools(["sst2"], root, 300, flan_templates)


def test_empty_source_is_an_error(tmp_path, flan_templates):
    root = _mini_mirror(tmp_path, [])
    with pytest.raises(pairs.DataError, match="has no rows"):
        pairs.load_pools(["sst2"], root, 300, flan_templates)


def test_too_few_templates_is_an_error(flan_templates, mirror):
    from dataclasses import replace

    import coinlib.data.flan as flan

    one = replace(flan_templates, patterns={**flan_templates.patterns, "cola": flan_templates.patterns["cola"][:1]})
    with pytest.raises(pairs.DataError, match="positives need two"):
        pairs.load_pool(flan.ADAPTERS["cola"], one, mirror)


def test_leakage_guard_fires(entries, pools, tmp_path):
    lines = {ln for t in pools.pools[0].templates for ln in t.input.split("\n") if len(ln) > 15 and "{" not in ln}
    leaked = next(ln for ln in sorted(lines) if any(ln in e["prompt"] for e in entries))  # a used instruction
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"source": "test", "clean": {"rte": ["unseen instruction", leaked]}}))
    with pytest.raises(pairs.LeakageError, match="1 evaluation instruction"):
        pairs.check_leakage(entries, pairs.eval_instructions([str(bad)]))
    pairs.check_leakage(entries, pairs.eval_instructions(["coin_eval_prompts"]))  # the paper's prompts: clean


def _params(tmp_path, **data):
    return validate({"run": {"name": "t", "output_root": str(tmp_path), "seed": 0},
                     "data": {"tasks": ["rte", "cola", "wsc273"], "size": 30, **data}})


def test_build_is_byte_deterministic_and_loadable(tmp_path):
    a = pairs.load_or_build(_params(tmp_path / "a"), progress=False)
    b = pairs.load_or_build(_params(tmp_path / "b"), progress=False)
    da, db = _params(tmp_path / "a").data_dir, _params(tmp_path / "b").data_dir
    for name in ["entries.jsonl", "task_counts.csv", "dataset/data-00000-of-00001.arrow"]:
        assert (da / name).read_bytes() == (db / name).read_bytes(), name
    assert a.num_rows == 30 and set(pairs.COLUMNS) <= set(a.column_names)
    assert a.to_list() == b.to_list()
    counts = (da / "task_counts.csv").read_text().splitlines()
    assert counts[0].startswith("category,task,dataset,paper_count,entries") and len(counts) == 4
    assert pairs.load_or_build(_params(tmp_path / "a"), progress=False).to_list() == a.to_list()  # cached


def test_build_fails_on_leak_and_on_small_holdout(tmp_path):
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps({"clean": {"cola": ["Would a linguist rate this sentence to be acceptable linguistically?"]}}))
    with pytest.raises(pairs.LeakageError):
        pairs.build(_params(tmp_path, eval_prompt_sets=[str(leak)], tasks=["cola"]), progress=False)
    assert not _params(tmp_path, eval_prompt_sets=[str(leak)], tasks=["cola"]).data_dir.exists()
    with pytest.raises(pairs.DataError, match="eval_holdout"):
        pairs.load_or_build(_params(tmp_path, eval_holdout=5), progress=False)


def test_hub_unreachable_is_a_named_skip(flan_templates):
    got = pairs.load_pools(["cola"], "hub", 300, flan_templates)  # tests force HF_HUB_OFFLINE
    assert not got.pools and got.skips[0].task == "cola" and "HF_HUB_OFFLINE" in got.skips[0].reason


def test_format_entry_shows_each_sequence_with_its_ids():
    entry = dict(entry_id=7, task="rte", template_id=2, pos_template_id=5, instance_id="rte/0/3",
                 neg_instance_id="rte/0/9", prompt="P?", target="yes", pos_prompt="Q?", neg_prompt="R?",
                 neg_target="no")
    assert pairs.format_entry(entry) == (
        "=== entry 7 | task rte | templates 2 -> 5\n"
        "--- original  [rte/0/3]\nP?\n>>> yes\n"
        "--- positive  [rte/0/3]\nQ?\n>>> yes\n"
        "--- negative  [rte/0/9]\nR?\n>>> no\n")


def test_table2_scaled_caps_keep_proportions_and_fill_the_size(pools):
    counts = {"rte": 1234, "sst2": 2000, "trec": 300, "wsc273": 100}
    assert pairs.task_caps(counts, "none", 52002) is None
    assert pairs.task_caps(counts, "table2", 52002) == counts
    caps = pairs.task_caps(counts, "table2-scaled", 52002)
    assert sum(caps.values()) == 52002 and all(c % 2 == 0 for c in caps.values())
    for name, count in counts.items():  # Table 2's shares, to within one pair
        assert abs(caps[name] - count * 52002 / sum(counts.values())) <= 2
    assert caps["sst2"] > caps["rte"] > caps["trec"] > caps["wsc273"]
    # built with replacement, each task gets exactly its scaled cap
    available = {p.name: p.adapter.paper_count for p in pools.pools}
    caps = pairs.task_caps(available, "table2-scaled", 600)
    built = pairs.build_entries(pools.pools, 600, seed=0, replacement=True, caps=caps)
    assert len(built) == 600
    assert {name: sum(e["task"] == name for e in built) for name in caps} == caps
    with pytest.raises(pairs.DataError, match="unknown data.task_caps 'table3'"):
        pairs.task_caps(counts, "table3", 600)


def test_seed_offset_draws_a_fresh_sample_with_the_same_run_seed(tmp_path, mirror):
    def params(**data):
        return validate({"run": {"name": "t", "seed": 3, "output_root": str(tmp_path), "mirror": str(mirror)},
                         "data": {"tasks": ["cola"], "size": 24, **data}})

    base, fresh = params(), params(seed_offset=1000)
    assert base.data_dir != fresh.data_dir
    a, b = pairs.build(base, progress=False).to_list(), pairs.build(fresh, progress=False).to_list()
    assert [e["instance_id"] for e in a] != [e["instance_id"] for e in b]
    assert [e["instance_id"] for e in b] == [e["instance_id"] for e in pairs.build(
        validate({"run": {"name": "t", "seed": 1003, "output_root": str(tmp_path / "o"), "mirror": str(mirror)},
                  "data": {"tasks": ["cola"], "size": 24}}), progress=False).to_list()]  # = run.seed + offset
