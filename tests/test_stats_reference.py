"""Each hand-written statistic against its library implementation on random data (scikit-learn, statsmodels, SciPy).

The project computes these itself (vectorised over bootstrap replicates, NaN where undefined); here they must equal
the reference implementations on random inputs with ties, several label counts and sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from coinlib.evaluate.compare import sign_flip_p, weighted_auc
from coinlib.evaluate.metrics import bootstrap_ci, fleiss_kappa, instruction_auc, log_odds, roc_auc

SEEDS = range(12)


def _scores(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Label log-likelihoods with exact ties: a third of the instances repeat another's scores. (Rounded scores would
    also tie in the margin, but rows equal up to a shift tie only up to float error in the softmax and log-odds.)"""
    scores = rng.normal(-2.0, 1.5, size=(n, k))
    repeat = rng.random(n) < 1 / 3
    scores[repeat] = scores[rng.integers(0, n, repeat.sum())]
    return scores


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_equals_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    score, positive = rng.integers(0, 6, n).astype(float), rng.random(n) < rng.uniform(0.2, 0.8)
    if positive.all() or not positive.any():
        assert np.isnan(roc_auc(score, positive))
    else:
        assert roc_auc(score, positive) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 4])
def test_instruction_auc_equals_scikit_learn(seed, k):
    """Two labels: AUC of the margin; more: macro one-vs-rest AUC of the softmax probabilities (``log_odds`` orders
    instances as the probability does)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3 * k, 80))
    scores, gold = _scores(rng, n, k), rng.integers(0, k, n)
    gold[:k] = np.arange(k)  # every label occurs
    if k == 2:
        expected = roc_auc_score(gold, scores[:, 1] - scores[:, 0])
    else:
        expected = roc_auc_score(gold, special.softmax(scores, axis=1), multi_class="ovr", average="macro")
    assert instruction_auc(scores, gold) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_log_odds_is_the_logit_of_the_softmax(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(-3, 2, size=(20, int(rng.integers(2, 5))))
    assert log_odds(scores) == pytest.approx(special.logit(special.softmax(scores, axis=-1)), abs=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3])
def test_weighted_auc_equals_scikit_learn_with_sample_weights(seed, k):
    """Bootstrap counts as instance weights: each replicate's AUC is scikit-learn's weighted AUC of that draw."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4 * k, 40))
    scores, gold = _scores(rng, n, k), rng.integers(0, k, n)
    gold[:k] = np.arange(k)
    counts = np.zeros((25, n))
    np.add.at(counts, (np.arange(25)[:, None], rng.integers(0, n, size=(25, n))), 1.0)
    got = weighted_auc(scores, gold, counts)
    m = log_odds(scores)
    for b, w in enumerate(counts):
        per_label = [roc_auc_score(gold == c, m[:, c], sample_weight=w) for c in ([1] if k == 2 else range(k))
                     if 0 < w[gold == c].sum() < w.sum()]
        if per_label:
            assert got[b] == pytest.approx(np.mean(per_label), abs=1e-9)
        else:
            assert np.isnan(got[b])


@pytest.mark.parametrize("seed", SEEDS)
def test_fleiss_kappa_equals_statsmodels(seed):
    rng = np.random.default_rng(seed)
    raters, subjects, k = int(rng.integers(2, 8)), int(rng.integers(2, 40)), int(rng.integers(2, 4))
    answers = rng.choice([f"l{c}" for c in range(k)], size=(raters, subjects), p=rng.dirichlet(np.ones(k)))
    table, _ = aggregate_raters(answers.T)  # subjects x categories counts
    expected = sm_fleiss_kappa(table, method="fleiss")
    got = fleiss_kappa(pd.DataFrame(answers))  # instructions (raters) x instances (subjects)
    if np.isnan(got):  # chance agreement 1 (a single category seen): undefined here, 0/0 there
        assert len(np.unique(answers)) == 1
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_ci_equals_scipy_percentile_bootstrap(seed):
    """The same generator gives SciPy the same draws: the intervals agree exactly, not just approximately."""
    rng = np.random.default_rng(seed)
    correct = rng.integers(0, 2, size=(int(rng.integers(1, 7)), int(rng.integers(5, 120))))
    n_boot = int(rng.integers(50, 500))
    low, high = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
    ref = stats.bootstrap((correct.mean(axis=0),), np.mean, n_resamples=n_boot, method="percentile",
                          rng=np.random.default_rng(seed), vectorized=True, axis=-1).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_sign_flip_p_equals_scipy_exact_permutation_test(seed):
    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(rng.normal(0, 0.02), 0.03, size=int(rng.integers(2, 11))), 3)  # SciPy needs 2
    ref = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 vectorized=True, n_resamples=np.inf, alternative="two-sided")
    assert sign_flip_p(d) == pytest.approx(ref.pvalue, abs=1e-12)
