"""Every metric on hand-made predictions whose values are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from coinlib.evaluate.metrics import (
    LABEL_FREE_COLUMNS,
    SUMMARY_COLUMNS,
    bootstrap_ci,
    calibrated_answers,
    consistency_rate,
    drop_rate,
    fleiss_kappa,
    flip_rate,
    instruction_auc,
    log_odds,
    margin_rank,
    margin_sd,
    mean_std,
    posix,
    roc_auc,
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


# ------------------------------------------------------------------------------------------------ label-free metrics
def test_summarize_without_label_scores_leaves_label_free_metrics_nan():
    summary = summarize(_predictions()).set_index("group")
    assert summary[[c for c in LABEL_FREE_COLUMNS if c != "flip_rate"]].isna().all().all()
    # flip rate pairs instruction i with clean instruction i: clean has 3 instructions, checklist 2, so undefined
    assert math.isnan(summary.loc["checklist", "flip_rate"])


def test_log_odds():
    m = log_odds(np.log([1.0, 2.0, 3.0]))  # m_k = s_k - log(sum of the other labels' likelihoods)
    assert m == pytest.approx([-math.log(5), math.log(2 / 4), 0.0])
    assert log_odds(np.array([-1.0, -3.0])) == pytest.approx([2.0, -2.0])  # two labels: +- the margin


def test_roc_auc_counts_ties_as_half():
    # positives 2.0, 1.0 against negatives 0.5, 1.0: wins 1 + 1 + 1 + tie 0.5 over 4 pairs
    assert roc_auc(np.array([0.5, 2.0, 1.0, 1.0]), np.array([False, True, True, False])) == 0.875
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))


def test_instruction_auc_binary_uses_the_margin():
    margins = np.array([1.0, -1.0, 1.5, 0.2])
    scores = np.stack([np.full(4, -7.0), -7.0 + margins], axis=1)
    # positives (gold 1) 1.0, 0.2 against negatives -1.0, 1.5: 2 wins of 4
    assert instruction_auc(scores, np.array([1, 0, 0, 1])) == 0.5
    assert math.isnan(instruction_auc(scores, np.array([1, 1, 1, 1])))


def test_instruction_auc_macro_one_vs_rest():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.25, 0.15, 0.6]])
    gold = np.array([0, 1, 2, 0])
    # label 0: 0.6, 0.25 vs 0.2, 0.3 -> 3/4; label 1: 0.5 vs 0.3, 0.3, 0.15 -> 1; label 2: 0.4 vs 0.1, 0.3, 0.6 -> 2/3
    assert instruction_auc(np.log(probs), gold) == pytest.approx((3 / 4 + 1 + 2 / 3) / 3)
    assert instruction_auc(np.log(probs) - 5.0, gold) == pytest.approx(29 / 36)  # only relative scores matter


def test_calibrated_answers_split_at_the_median():
    two = lambda margins: np.stack([np.zeros(len(margins)), np.array(margins, float)], axis=1)  # noqa: E731
    assert calibrated_answers(two([3.0, -1.0, 0.5, 2.0])).tolist() == [1, 0, 0, 1]  # median 1.25
    assert calibrated_answers(two([1.0, 2.0, 3.0])).tolist() == [0, 0, 1]  # the median instance itself gets l_0
    # three labels: column medians (0, -2, -4) subtracted, then the highest; raw argmax would answer 0 everywhere
    scores = np.array([[0.0, -1.0, -5.0], [0.0, -3.0, -2.0], [0.0, -2.0, -4.0]])
    assert calibrated_answers(scores).tolist() == [1, 2, 0]


def test_flip_rate_pairs_instructions_by_index():
    clean = pd.DataFrame([["a", "a", "b"], ["b", "b", "b"]])
    perturbed = pd.DataFrame([["a", "b", "b"], ["b", "b", "a"]])
    assert flip_rate(perturbed, clean) == pytest.approx(2 / 6)
    assert flip_rate(clean, clean) == 0.0
    assert math.isnan(flip_rate(perturbed.iloc[:1], clean))  # a missing clean counterpart: undefined


def test_margin_sd():
    margins = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])  # [instruction, instance]
    base = np.array([[-4.0, -1.0], [-2.0, -9.0], [0.0, -3.0]])  # label-0 scores shift, margins do not
    scores = np.stack([base, base + margins], axis=-1)
    # instance 0: margins 1, 3, 2 -> population SD sqrt(2/3); instance 1: constant -> 0
    assert margin_sd(scores) == pytest.approx(math.sqrt(2 / 3) / 2)
    # three labels, one instance: log-odds (0, -ln3, -ln3) then (-ln3, 0, -ln3): SDs ln3/2, ln3/2, 0
    three = np.log(np.array([[[0.5, 0.25, 0.25]], [[0.25, 0.5, 0.25]]]))
    assert margin_sd(three) == pytest.approx(math.log(3) / 3)
    assert math.isnan(margin_sd(scores[:1]))


def test_margin_rank_is_scale_free_and_pairs_instructions_by_index():
    clean = np.stack([np.zeros((2, 4)), np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])], axis=-1)
    assert margin_rank(clean, clean) == pytest.approx(1.0)
    # a monotone rescaling of the margins (a weaker or stronger model, same order) changes nothing
    rescaled = clean.copy()
    rescaled[..., 1] = 0.1 * clean[..., 1] ** 3 - 7.0
    assert margin_rank(rescaled, clean) == pytest.approx(1.0)
    # instruction i is compared with clean instruction i: swapping the two instructions reverses both orders
    assert margin_rank(clean[::-1], clean) == pytest.approx(-1.0)
    # an instruction with constant margins carries no order and is left out; none left: NaN
    flat = clean.copy()
    flat[0, :, 1] = 5.0
    assert margin_rank(flat, clean) == pytest.approx(1.0)
    assert math.isnan(margin_rank(flat[:1], clean[:1]))
    assert math.isnan(margin_rank(clean[:, :3], clean))  # other instances: undefined


def test_posix_hand_computed():
    # one instance, two instructions, label token counts (1, 2); answers: label 0 under x_0, label 1 under x_1
    # psi = 1/2 * (|s_0(y_1) - s_1(y_1)| / 2 + |s_1(y_0) - s_0(y_0)| / 1) = 1/2 * (1.5 / 2 + 2) = 1.375
    scores = np.array([[[-1.0, -2.0], [-1.0, -1.0]], [[-3.0, -0.5], [-1.0, -1.0]]])  # [instruction, instance, label]
    responses = np.array([[0, 0], [1, 0]])
    assert posix(scores[:, :1], responses[:, :1], np.array([1, 2])) == pytest.approx(1.375)
    # a second instance scored identically under both instructions has psi 0: the mean halves
    assert posix(scores, responses, np.array([1, 2])) == pytest.approx(1.375 / 2)
    # three instructions: each answer moves by 3 nats in total under the other two -> (3 + 3 + 3) / (3 * 2)
    three = np.array([[[0.0, -1.0]], [[0.0, -2.0]], [[-3.0, 0.0]]])
    assert posix(three, np.array([[0], [0], [1]]), np.array([1, 1])) == pytest.approx(1.5)
    assert math.isnan(posix(three[:1], np.array([[0]]), np.array([1, 1])))


# margins s_b - s_a per instruction (s_a = 0), gold (a, b, b, a); predictions are the higher-scored label
MARGINS = {"clean": [[-1, 2, 1, 0.5], [-2, -0.5, 1, 0]], "checklist": [[1, 2, 3, 4], [-1, -1, 1, -3]]}


def _scored_predictions(tokens: str = '{"a": 1, "b": 2}') -> pd.DataFrame:
    rows = []
    for group, table in MARGINS.items():
        for i, margins in enumerate(table):
            for j, (m, g) in enumerate(zip(margins, GOLD)):
                pred = "b" if m > 0 else "a"
                rows.append(dict(model="m", task="t", group=group, instruction_id=i, instance_id=str(j), gold=g,
                                 prediction=pred, correct=pred == g, label_scores=json.dumps({"a": 0.0, "b": m}),
                                 label_tokens=tokens))
    return pd.DataFrame(rows)


def test_summarize_label_free_known_values():
    summary = summarize(_scored_predictions()).set_index("group")
    clean, check = summary.loc["clean"], summary.loc["checklist"]
    # AUC per instruction: clean 1 and 3/4; checklist 1/2 and 3.5/4 (a tie between -1 and -1)
    assert (clean.auc, clean.std_auc) == pytest.approx((0.875, 0.125))
    assert (check.auc, check.std_auc) == pytest.approx((0.6875, 0.1875))
    # calibrated at the median margin: clean (a,b,b,a) 1.0 and (a,a,b,b) 0.5; checklist (a,a,b,b) 0.5, (a,a,b,a) 0.75
    assert (clean.cal_acc, clean.std_cal_acc) == pytest.approx((0.75, 0.25))
    assert (check.cal_acc, check.std_cal_acc) == pytest.approx((0.625, 0.125))
    # raw answers differ from clean's in 1 of 8 cells, calibrated answers in 3 of 8; clean has no reference
    assert check.flip_rate == pytest.approx(1 / 8) and check.flip_rate_cal == pytest.approx(3 / 8)
    assert math.isnan(clean.flip_rate) and math.isnan(clean.flip_rate_cal)
    # SD of two margins is half their distance: clean (0.5, 1.25, 0, 0.25), checklist (1, 1.5, 1, 3.5)
    assert clean.margin_sd == pytest.approx(0.5) and check.margin_sd == pytest.approx(1.75)
    # POSIX per instance: clean (0, 2.5/2/2, 0, 0.5/2/2); checklist (2/2/2, 3/2/2, (1 + 1)/2, 7/2/2)
    assert clean.posix == pytest.approx(0.1875) and check.posix == pytest.approx(1.0)
    # Spearman of checklist vs clean margins: instruction 0 ranks (1,2,3,4) vs (1,4,3,2): 1 - 6 * 8 / 60 = 0.2;
    # instruction 1 ranks (2.5,2.5,4,1) vs (1,2,4,3): 1.5 / sqrt(4.5 * 5); the mean of the two
    assert check.margin_rank == pytest.approx((0.2 + 1.5 / math.sqrt(22.5)) / 2)
    assert math.isnan(clean.margin_rank)
    # accuracy columns are unchanged by the label scores
    assert clean.mean_acc == pytest.approx((3 / 4 + 3 / 4) / 2)


def test_posix_needs_the_token_counts():
    summary = summarize(_scored_predictions(tokens="{}")).set_index("group")
    assert summary["posix"].isna().all() and summary["auc"].notna().all()


def test_generate_mode_rows_give_nan_label_free_metrics_but_a_flip_rate():
    preds = _scored_predictions().assign(label_scores="{}", label_tokens="{}")
    summary = summarize(preds).set_index("group")
    assert summary[["auc", "cal_acc", "flip_rate_cal", "margin_sd", "posix", "margin_rank"]].isna().all().all()
    assert summary.loc["checklist", "flip_rate"] == pytest.approx(1 / 8)
