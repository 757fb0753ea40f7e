"""Every metric on hand-made predictions whose values are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from coinlib.evaluate.metrics import (
    SUMMARY_COLUMNS,
    bootstrap_ci,
    consistency_rate,
    drop_rate,
    fleiss_kappa,
    mean_std,
    summarize,
)

GOLD = ["a", "b", "b", "a"]
CLEAN = [["a", "a", "b", "b"], ["a", "b", "b", "a"], ["a", "a", "a", "a"]]  # accuracies 0.5, 1.0, 0.5
CHECKLIST = [["a", "a", "a", "a"], ["b", "b", "b", "b"]]  # accuracies 0.5, 0.5


def _predictions() -> pd.DataFrame:
    rows = []
    for group, table in (("clean", CLEAN), ("checklist", CHECKLIST)):
        for i, preds in enumerate(table):
            for j, (p, g) in enumerate(zip(preds, GOLD)):
                rows.append(dict(model="m", task="t", group=group, instruction_id=i, instance_id=str(j), gold=g,
                                 prediction=p, correct=p == g))
    return pd.DataFrame(rows)


def test_mean_and_population_std():
    mean, std = mean_std([0.5, 1.0, 0.5])
    assert mean == pytest.approx(2 / 3)
    assert std == pytest.approx(math.sqrt(1 / 18))  # population (ddof 0), not sample std (which is sqrt(1/12))


def test_drop_rate():
    assert drop_rate(0.5, 2 / 3) == pytest.approx(0.25)
    assert drop_rate(0.8, 0.8) == 0.0
    assert math.isnan(drop_rate(0.3, 0.0))


def test_consistency_rate():
    preds = pd.DataFrame(CLEAN)  # instructions x instances: only instance 0 is answered identically
    assert consistency_rate(preds) == 0.25
    assert consistency_rate(pd.DataFrame(CHECKLIST)) == 0.0
    assert consistency_rate(pd.DataFrame([["a", "b"], ["a", "b"]])) == 1.0


def test_fleiss_kappa_hand_computed():
    # counts per instance (a, b): (3,0) (2,1) (1,2) (2,1): P_bar = 1/2, P_e = 5/9 -> kappa = -1/8
    assert fleiss_kappa(pd.DataFrame(CLEAN)) == pytest.approx(-0.125)
    assert fleiss_kappa(pd.DataFrame(CHECKLIST)) == pytest.approx(-1.0)
    assert math.isnan(fleiss_kappa(pd.DataFrame([["a", "a"], ["a", "a"]])))  # chance agreement 1: undefined


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) style example: 10 subjects, 14 raters, 5 categories; kappa = 0.210
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    columns = [[c for c, n in enumerate(row) for _ in range(n)] for row in counts]
    assert fleiss_kappa(pd.DataFrame(columns).T) == pytest.approx(0.2099, abs=1e-4)


def test_bootstrap_ci():
    # every instance has the same mean over instructions: no resample can move the mean
    assert bootstrap_ci(np.array([[1, 0, 1], [0, 1, 0]])) == pytest.approx((0.5, 0.5))
    correct = np.random.default_rng(1).integers(0, 2, size=(6, 200))
    low, high = bootstrap_ci(correct, seed=3)
    assert low < correct.mean() < high
    assert (low, high) == bootstrap_ci(correct, seed=3)  # seeded
    assert high - low == pytest.approx(2 * 1.96 * correct.mean(axis=0).std() / np.sqrt(200), rel=0.2)


def test_summarize_known_values():
    summary = summarize(_predictions())
    assert list(summary.columns) == SUMMARY_COLUMNS
    summary = summary.set_index("group")
    clean, check = summary.loc["clean"], summary.loc["checklist"]
    assert (clean.n_instructions, clean.n_instances) == (3, 4)
    assert clean.mean_acc == pytest.approx(2 / 3) and clean.std_acc == pytest.approx(math.sqrt(1 / 18))
    assert (clean.worst_acc, clean.best_acc, clean.spread) == (0.5, 1.0, 0.5)
    assert clean.consistency == 0.25 and clean.fleiss_kappa == pytest.approx(-0.125)
    assert clean.drop_rate == 0.0
    assert check.mean_acc == 0.5 and check.std_acc == 0.0 and check.drop_rate == pytest.approx(0.25)
    assert check.consistency == 0.0 and check.fleiss_kappa == pytest.approx(-1.0)
    assert clean.ci_low <= clean.mean_acc <= clean.ci_high


def test_summarize_rejects_mismatched_instances():
    preds = _predictions()
    preds = preds.drop(index=preds.index[0])  # instruction 0 of clean lost one instance
    with pytest.raises(ValueError, match="different instances"):
        summarize(preds)
