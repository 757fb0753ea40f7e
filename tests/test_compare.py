"""Paired bootstrap of two models on hand-made predictions with known differences."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from coinlib.evaluate.compare import COMPARE_COLUMNS, paired_bootstrap, weighted_auc
from coinlib.evaluate.metrics import instruction_auc


def _predictions(correct: dict[str, dict[tuple[str, str], np.ndarray]]) -> pd.DataFrame:
    """Rows from ``{model: {(task, group): array [instruction, instance] of 0/1}}``."""
    rows = []
    for model, cells in correct.items():
        for (task, group), grid in cells.items():
            for i, j in itertools.product(*map(range, grid.shape)):
                rows.append(dict(model=model, task=task, group=group, instruction_id=i, instance_id=j,
                                 correct=bool(grid[i, j])))
    return pd.DataFrame(rows)


def _grid(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=int)


def test_identical_models_differ_by_exactly_zero():
    grid = _grid([[1, 0, 1, 1], [0, 0, 1, 1]])
    cells = {("sst2", "clean"): grid, ("sst2", "checklist"): 1 - grid}
    out = paired_bootstrap(_predictions({"a": cells, "b": cells}), "a", "b", n_boot=200)
    assert list(out.columns) == COMPARE_COLUMNS and list(out["group"]) == ["clean", "checklist", "average"]
    assert (out[["acc_diff", "acc_diff_low", "acc_diff_high", "std_diff"]] == 0).all().all()
    assert (out["p_better"] == 0).all()


def test_known_accuracy_and_std_differences():
    # task 1: a right everywhere, b right on instruction 0 only -> acc 1 vs 0.5, std 0 vs 0.5
    # task 2: both right on half the instances under both instructions -> no difference
    ones, half = np.ones((2, 4), int), _grid([[1, 1, 0, 0], [1, 1, 0, 0]])
    a = {("sst2", "clean"): ones, ("rte", "clean"): half}
    b = {("sst2", "clean"): _grid([[1, 1, 1, 1], [0, 0, 0, 0]]), ("rte", "clean"): half}
    row = paired_bootstrap(_predictions({"a": a, "b": b}), "a", "b", n_boot=500).set_index("group").loc["clean"]
    assert row["acc_a"] == pytest.approx((1 + 0.5) / 2) and row["acc_b"] == pytest.approx((0.5 + 0.5) / 2)
    assert row["acc_diff"] == pytest.approx(0.25)
    # the sst2 difference is 0.5 on every instance, so every resample gives exactly 0.25
    assert row["acc_diff_low"] == pytest.approx(0.25) and row["acc_diff_high"] == pytest.approx(0.25)
    assert row["p_better"] == 1.0
    # std pooled over tasks = population std of all per-instruction accuracies (not the mean of per-task stds,
    # which would give 0 and 0.25): a {1, 1, .5, .5} -> 0.25; b {1, 0, .5, .5} -> sqrt((.25 + .25) / 4)
    assert row["std_a"] == pytest.approx(0.25) and row["std_b"] == pytest.approx(np.sqrt(0.125))
    assert row["std_diff"] == pytest.approx(0.25 - np.sqrt(0.125))
    assert row["n_tasks"] == 2 and row["n_instances"] == 8


def test_interval_covers_the_estimate_widens_with_noise_and_is_seeded():
    rng = np.random.default_rng(1)
    a = {("sst2", "clean"): rng.integers(0, 2, (3, 40)), ("rte", "clean"): rng.integers(0, 2, (3, 40))}
    b = {k: rng.integers(0, 2, v.shape) for k, v in a.items()}
    preds = _predictions({"a": a, "b": b})
    out = paired_bootstrap(preds, "a", "b", n_boot=1000, seed=3)
    row = out.iloc[0]
    assert row["acc_diff_low"] < row["acc_diff"] < row["acc_diff_high"]
    assert 0 < row["p_better"] < 1
    pd.testing.assert_frame_equal(out, paired_bootstrap(preds, "a", "b", n_boot=1000, seed=3))
    assert not out.equals(paired_bootstrap(preds, "a", "b", n_boot=1000, seed=4))
    narrow = paired_bootstrap(preds, "a", "b", n_boot=1000, seed=3, level=0.5).iloc[0]
    assert narrow["acc_diff_high"] - narrow["acc_diff_low"] < row["acc_diff_high"] - row["acc_diff_low"]


def test_average_pools_the_groups():
    a = {("sst2", "clean"): np.ones((2, 2), int), ("sst2", "semantic"): np.zeros((2, 2), int)}
    b = {k: np.zeros((2, 2), int) for k in a}
    out = paired_bootstrap(_predictions({"a": a, "b": b}), "a", "b", n_boot=50).set_index("group")
    assert out.loc["clean", "acc_diff"] == 1 and out.loc["semantic", "acc_diff"] == 0
    assert out.loc["average", "acc_diff"] == pytest.approx(0.5)
    # per-instruction accuracies of a: 1, 1 (clean), 0, 0 (semantic): pooled std 0.5 (the mean of group stds is 0)
    assert out.loc["average", "std_a"] == pytest.approx(0.5) and out.loc["average", "std_diff"] == pytest.approx(0.5)


def test_models_on_different_samples_are_refused():
    a = {("sst2", "clean"): np.ones((2, 4), int)}
    b = {("sst2", "clean"): np.ones((2, 3), int)}
    with pytest.raises(ValueError, match="same tasks, instructions and instances"):
        paired_bootstrap(_predictions({"a": a, "b": b}), "a", "b")
    with pytest.raises(ValueError, match="model 'c' is not in the predictions"):
        paired_bootstrap(_predictions({"a": a, "b": b}), "a", "c")
    holes = _predictions({"a": a, "b": a}).drop(index=0)
    with pytest.raises(ValueError, match="not answered for every instance"):
        paired_bootstrap(holes, "a", "b")


# ------------------------------------------------------------------------------------------------ label-free metrics
GOLD = ["a", "b", "b", "a"]
# margins s_b - s_a per group and instruction (s_a = 0); predictions are the higher-scored label
MARGINS_A = {"clean": [[-1, 2, 1, 0.5], [-2, -0.5, 1, 0]], "checklist": [[1, 2, 3, 4], [-1, -1, 1, -3]]}
MARGINS_B = {"clean": [[-1, 2, 1, 0.5], [-1, 2, 1, 0.5]], "checklist": [[-1, 2, 1, 0.5], [1, 2, 3, 4]]}


def _scored(margins_by_model: dict, gold=GOLD, task: str = "sst2") -> pd.DataFrame:
    rows = []
    for model, margins in margins_by_model.items():
        for group, table in margins.items():
            for i, row in enumerate(table):
                for j, (m, g) in enumerate(zip(row, gold)):
                    pred = "b" if m > 0 else "a"
                    rows.append(dict(model=model, task=task, group=group, instruction_id=i, instance_id=j, gold=g,
                                     prediction=pred, correct=pred == g,
                                     label_scores=json.dumps({"a": 0.0, "b": float(m)})))
    return pd.DataFrame(rows)


def test_label_free_point_estimates_and_differences():
    out = paired_bootstrap(_scored({"a": MARGINS_A, "b": MARGINS_B}), "a", "b", n_boot=200).set_index("group")
    # a: AUC 0.875 / 0.6875, calibrated accuracy 0.75 / 0.625, flips 1/8 (answers) and 3/8 (calibrated) (see
    # tests/test_metrics.py); b: AUC (1 + 1) / 2 and (1 + 1/2) / 2, calibrated (1 + 1) / 2 and (1 + 1/2) / 2,
    # flips: checklist instruction 1 answers "b" where clean answers "a" (1 of 8), calibrated 2 of 8
    expected = {
        "auc": [(0.875, 1.0), (0.6875, 0.75), (0.78125, 0.875)],
        "cal_acc": [(0.75, 1.0), (0.625, 0.75), (0.6875, 0.875)],
        # per-instruction calibrated accuracies: a clean 1, 0.5; a checklist 0.5, 0.75; b clean 1, 1; b checklist
        # 1, 0.5 -> population std over the two instructions
        "std_cal_acc": [(0.25, 0.0), (0.125, 0.25), (0.1875, 0.125)],
        "flip_rate": [(np.nan, np.nan), (0.125, 0.125), (0.125, 0.125)],
        "flip_rate_cal": [(np.nan, np.nan), (0.375, 0.25), (0.375, 0.25)],
    }
    for metric, values in expected.items():
        for group, (a, b) in zip(["clean", "checklist", "average"], values):
            row = out.loc[group]
            assert (row[f"{metric}_a"], row[f"{metric}_b"]) == pytest.approx((a, b), nan_ok=True), (metric, group)
            assert row[f"{metric}_diff"] == pytest.approx(a - b, nan_ok=True)
            if not np.isnan(a - b):
                assert row[f"{metric}_diff_low"] <= row[f"{metric}_diff_high"]


def test_identical_models_have_zero_label_free_differences():
    out = paired_bootstrap(_scored({"a": MARGINS_A, "b": MARGINS_A}), "a", "b", n_boot=100)
    cols = [f"{m}_{p}" for m in ("auc", "cal_acc", "flip_rate_cal") for p in ("diff", "diff_low", "diff_high")]
    assert (out.iloc[1:][cols] == 0).all().all()  # rows checklist and average
    assert (out.iloc[0][cols[:6]] == 0).all() and out.iloc[0][cols[6:]].isna().all()  # clean: no flip rate


def test_label_free_replicates_use_the_accuracy_draws():
    # margins -k..-1, 1..k in every instruction: the median is 0, so calibrated answers equal the raw answers and
    # calibrated accuracy must reproduce the accuracy interval exactly when the two share their draws
    rng = np.random.default_rng(0)
    gold = list(rng.choice(["a", "b"], size=40))
    base = np.r_[-np.arange(1, 21), np.arange(1, 21)].astype(float)
    margins = {m: {g: [rng.permutation(base) for _ in range(3)] for g in ("clean", "checklist")} for m in "ab"}
    out = paired_bootstrap(_scored(margins, gold), "a", "b", n_boot=300, seed=5)
    for part in ("diff", "diff_low", "diff_high"):
        assert out[f"cal_acc_{part}"].to_numpy() == pytest.approx(out[f"acc_{part}"].to_numpy())


def test_weighted_auc_equals_the_auc_of_the_resampled_instances():
    scores = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.25, 0.15, 0.6], [0.1, 0.1, 0.8]]))
    gold = np.array([0, 1, 2, 0, 2])
    counts = np.array([[1, 1, 1, 1, 1], [2, 0, 1, 1, 1], [0, 3, 0, 0, 2]])
    got = weighted_auc(scores, gold, counts)
    for row, value in zip(counts, got):
        keep = np.repeat(np.arange(5), row)
        assert value == pytest.approx(instruction_auc(scores[keep], gold[keep]), nan_ok=True)


def test_generate_mode_predictions_give_nan_label_free_columns():
    preds = _scored({"a": MARGINS_A, "b": MARGINS_B}).assign(label_scores="{}")
    out = paired_bootstrap(preds, "a", "b", n_boot=50).set_index("group")
    assert out[["auc_diff", "cal_acc_diff", "flip_rate_cal_diff"]].isna().all().all()
    assert out.loc["checklist", "flip_rate_diff"] == 0.0  # parsed answers still flip
