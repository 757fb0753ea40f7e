"""The shared evaluation sample: deterministic, nested, bounded."""

from __future__ import annotations

import pytest

from coinlib.core.sampling import EVAL_SPLITS, eval_sample_ids, sample_indices


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
        eval_sample_ids("sst5", 10, n_rows=100)


def test_eval_sample_reads_split_length_from_mirror(mirror):
    ids = eval_sample_ids("qqp", 300, mirror=mirror)
    assert ids == list(range(39))  # the offline QQP file has 39 rows: all are evaluated
    assert eval_sample_ids("mnli", 300, mirror=mirror) == eval_sample_ids("mnli_matched", 300, mirror=mirror)
    assert set(EVAL_SPLITS) >= {"cola", "mnli", "qnli", "qqp", "rte", "sst2", "wnli", "mrpc"}
