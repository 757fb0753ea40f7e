"""The shared evaluation sample: deterministic, nested, bounded; MNLI drawn from both validation sets together."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coinlib.core.tasks import eval_sample, held_out_rows, load_task, sample_indices


def test_sample_is_deterministic_sorted_and_unique():
    a = sample_indices(1000, 300, seed=3)
    assert a == sample_indices(1000, 300, seed=3)
    assert a == sorted(set(a)) and len(a) == 300
    assert all(0 <= i < 1000 for i in a)
    assert a != sample_indices(1000, 300, seed=4)


def test_smaller_samples_are_nested_in_larger_ones():
    small, large = set(sample_indices(5463, 8)), set(sample_indices(5463, 300))
    assert small <= large


def test_all_rows_when_fewer_than_n():
    assert sample_indices(39, 300) == list(range(39))


def test_negative_sizes_rejected():
    with pytest.raises(ValueError, match="n_rows and n"):
        sample_indices(-1, 3)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="known: cola"):
        eval_sample("sst5", 10)


def test_eval_sample_reads_split_length_from_mirror(mirror):
    assert [i for _, i in eval_sample("qqp", 300, mirror)] == list(range(39))  # all 39 offline QQP rows


def _rows(mirror, config):
    path = mirror / "hf" / "nyu-mll__glue" / config / "validation.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_mnli_sample_draws_from_matched_and_mismatched_together(mirror):
    """Expected rows computed here from the mirror files: the first 300 of a seed-0 permutation of the 2,000 rows of
    validation_matched followed by validation_mismatched (the reference concatenates them in that order)."""
    matched, mismatched = _rows(mirror, "mnli_matched"), _rows(mirror, "mnli_mismatched")
    both = [("mnli_matched", r) for r in matched] + [("mnli_mismatched", r) for r in mismatched]
    picked = sorted(np.random.default_rng(0).permutation(len(both))[:300].tolist())
    expected = [(f"{c}:{r['idx']}", f"Premise: {r['premise']} Hypothesis: {r['hypothesis']}", r["label"])
                for c, r in (both[i] for i in picked)]
    got = load_task("mnli", 300, mirror)
    assert list(zip(got["instance_id"], got["content"], got["label"])) == expected
    n_matched = sum(i < len(matched) for i in picked)
    assert got["instance_id"].str.startswith("mnli_matched:").sum() == n_matched
    assert 0 < n_matched < 300  # both sets are represented
    # mnli_matched / mnli_mismatched stay one split each, with their own sample
    alone = load_task("mnli_matched", 300, mirror)
    assert alone["instance_id"].tolist() == [str(matched[i]["idx"]) for i in
                                             sorted(np.random.default_rng(0).permutation(1000)[:300].tolist())]


def test_holdout_covers_every_task_that_samples_a_split(mirror):
    """A training pool read from mnli_matched/validation must exclude both the mnli_matched sample and the part of
    the mnli sample that falls in the matched rows (computed here from the two permutations)."""
    n = 300
    own = set(np.random.default_rng(0).permutation(1000)[:n].tolist())
    joint = {int(i) for i in np.random.default_rng(0).permutation(2000)[:n] if i < 1000}
    assert held_out_rows(("glue", "mnli_matched", "validation"), n, mirror) == own | joint
    assert len(own | joint) > n  # the two samples differ, so more than n rows are held out
    mism = {int(i) - 1000 for i in np.random.default_rng(0).permutation(2000)[:n] if i >= 1000}
    assert held_out_rows(("glue", "mnli_mismatched", "validation"), n, mirror) == own | mism
    assert held_out_rows(("glue", "sst2", "train"), n, mirror) == set()
