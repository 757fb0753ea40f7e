"""``evaluate.sample: reference``: the paper's code's evaluation instances, checked offline on the GLUE validation
sets the mirror holds whole (hub size = the reference's ``task_to_cnt``), beside the shared sample."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from coinlib.core.params import validate
from coinlib.core.sources import source_key
from coinlib.core.tasks import (
    REFERENCE_SAMPLE_SEED, eval_sample, held_out_rows, load_task, reference_sample_indices, sample_indices,
)
from coinlib.data import pairs
from coinlib.data.flan import load_templates
from coinlib.evaluate.runner import rows_digest, settings_key

#: luka-group/CoIN promptbench/dataload.py ``GLUE.task_to_cnt`` (the hub's validation sizes), for the tasks whose
#: whole validation split the mirror holds, in hub order (MANIFEST.tsv: "exact").
COMPLETE = {"sst2": 872, "cola": 1043, "mrpc": 408, "qnli": 5463, "rte": 277, "wnli": 71}
N = 300  # the reference's eval_sample_cnt (scripts/eval_contrastive.sh)


def _reference_call(n_rows: int, sample_cnt: int, calls: int = 1) -> list[int]:
    """What the reference computes: ``seed_all(42)`` once, then ``random.sample`` per dataset built (global state
    saved and restored around it)."""
    state = random.getstate()
    try:
        random.seed(42)
        for _ in range(calls):
            out = random.sample(range(n_rows), min(n_rows, sample_cnt))
        return out
    finally:
        random.setstate(state)


def _params(tmp_path, sample="reference", n_per_task=N, **data):
    return validate({"run": {"name": "t", "output_root": str(tmp_path), "seed": 0}, "model": {"name": "m"},
                     "data": {"tasks": ["qnli"], "size": 10, **data},
                     "evaluate": {"sample": sample, "n_per_task": n_per_task}})


@pytest.mark.parametrize("task", sorted(COMPLETE))
def test_indices_are_the_reference_calls_on_complete_splits(task, mirror):
    got = eval_sample(task, N, mirror, sample="reference")
    assert {s for s, _ in got} == {("glue", task, "validation")}
    n_rows = COMPLETE[task]
    assert [i for _, i in got] == reference_sample_indices(n_rows, N) == _reference_call(n_rows, N)
    assert len(got) == min(n_rows, N)


def test_pinned_values_fail_on_another_seed_draw_or_order():
    # pinned from CPython's random.seed(42); random.sample(range(872), 300) / (range(277), 277)
    assert reference_sample_indices(872, N)[:8] == [654, 114, 25, 759, 281, 250, 228, 142]
    assert reference_sample_indices(277, N)[:8] == [57, 12, 140, 125, 114, 71, 52, 44]
    assert REFERENCE_SAMPLE_SEED == 42
    assert reference_sample_indices(872, N, seed=41) != reference_sample_indices(872, N)
    # the second dataset a reference process builds (e.g. deepwordbug after clean) continues the stream
    assert reference_sample_indices(872, N, draw=2)[:3] == [388, 2, 399] == _reference_call(872, N, calls=2)[:3]
    assert reference_sample_indices(872, N, draw=2) != reference_sample_indices(872, N)
    assert reference_sample_indices(872, N) != sorted(reference_sample_indices(872, N))  # draw order is kept
    with pytest.raises(ValueError, match="draw >= 1"):
        reference_sample_indices(872, N, draw=0)


def test_global_random_state_is_untouched():
    random.seed(7)
    before = random.random()
    random.seed(7)
    reference_sample_indices(872, N)
    assert random.random() == before


def test_reference_rows_are_deterministic_in_reference_order_and_differ_from_shared(mirror):
    ref = load_task("sst2", N, mirror, sample="reference")
    assert ref.equals(load_task("sst2", N, mirror, sample="reference"))
    # SST-2's idx is the row number (hub builder), so the ids are the reference's indices, in its order
    assert ref["instance_id"].tolist() == [str(i) for i in _reference_call(872, N)]
    shared = load_task("sst2", N, mirror)
    assert shared["instance_id"].tolist() == [str(i) for i in sample_indices(872, N)]
    assert set(ref["instance_id"]) != set(shared["instance_id"])
    assert rows_digest(ref) != rows_digest(shared)
    # RTE has fewer rows than 300: both samples take all 277, the reference in its own (shuffled) order
    rte_ref, rte_shared = load_task("rte", N, mirror, "reference"), load_task("rte", N, mirror)
    assert sorted(rte_ref["instance_id"]) == sorted(rte_shared["instance_id"]) and len(rte_ref) == 277
    assert rte_ref["instance_id"].tolist() == [str(i) for i in _reference_call(277, N)]


def test_mnli_draws_over_matched_then_mismatched(mirror):
    got = eval_sample("mnli", N, mirror, sample="reference")
    lengths = [1000, 1000]  # the mirror's MNLI sample; the hub's 9815 + 9832 would give another draw
    flat = [i if s[1] == "mnli_matched" else lengths[0] + i for s, i in got]
    assert flat == _reference_call(sum(lengths), N)


def test_unknown_sample_is_rejected(mirror):
    with pytest.raises(ValueError, match="known: shared, reference"):
        eval_sample("sst2", 5, mirror, sample="paper")
    with pytest.raises(ValueError, match="evaluate.sample"):
        validate({"run": {"name": "t"}, "model": {"name": "m"}, "evaluate": {"sample": "paper"}})


def test_caches_see_the_option(tmp_path):
    shared, ref = _params(tmp_path, "shared"), _params(tmp_path)
    assert shared.evaluate.sample == "shared"  # the default
    assert settings_key(shared) != settings_key(ref)
    assert shared.data_dir != ref.data_dir  # the holdout follows the sample, so the built data does too
    old = json.dumps([shared.data.model_dump(), shared.run.seed, source_key(shared.run.mirror)], sort_keys=True)
    assert shared.data_dir.name == hashlib.sha256(old.encode()).hexdigest()[:12]  # shared keys unchanged


def test_training_holds_out_the_reference_sample(mirror):
    split = ("glue", "qnli", "validation")
    want = set(reference_sample_indices(5463, N))
    assert held_out_rows(split, N, mirror, sample="reference") == want != held_out_rows(split, N, mirror)
    qnli = pairs.load_pools(["qnli"], mirror, N, load_templates(mirror), sample="reference").pools[0]
    ids = {e.instance_id for e in qnli.examples}
    assert qnli.held_out == N and not {f"glue/qnli/validation/{i}" for i in want} & ids
    # the evaluation scores exactly the held-out rows
    assert {i for _, i in eval_sample("qnli", N, mirror, sample="reference")} == want


def test_build_refuses_a_reference_holdout_of_another_size(tmp_path):
    for n in (50, 400):  # smaller draws are not a prefix of the 300-row draw (random.sample switches method)
        with pytest.raises(pairs.DataError, match=r"Fix: set data.eval_holdout equal to evaluate.n_per_task"):
            pairs.load_or_build(_params(tmp_path, n_per_task=n), progress=False)
    assert not set(reference_sample_indices(872, 50)) <= set(reference_sample_indices(872, N))
    pairs._check_holdout(_params(tmp_path))  # equal sizes: the evaluated rows are the held-out rows
    pairs._check_holdout(_params(tmp_path, n_per_task=50, eval_holdout=50))
