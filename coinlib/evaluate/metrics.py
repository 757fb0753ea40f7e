"""Robustness metrics over a tidy predictions table (one row per model x task x group x instruction x instance).

Accuracies are fractions in [0, 1]. Spread over instructions uses the population standard deviation
(``numpy.std``, ddof 0), as the paper's evaluation code does.

Label-free metrics read the stored label scores (``label_scores``: JSON label -> summed log-likelihood of the
label's tokens, in the task's label order; ``label_tokens``: JSON label -> number of tokens scored). They need no
decision threshold fixed in advance, so a model that prefers one label word by a fixed offset is not judged by that
offset alone. ``generate`` mode stores no label scores: those metrics are NaN there (``flip_rate`` on the parsed
answers is defined in both modes). With labels ``l_0 .. l_{K-1}`` and scores ``s_k``:

- log-odds of label k, ``m_k = s_k - log sum_{j != k} exp(s_j)``; for two labels ``m_1 = s_1 - s_0`` is *the margin*;
- ``auc``: per instruction, ROC AUC of ``m_1`` for gold ``l_1`` against gold ``l_0`` (two labels), or the mean over
  labels k of the one-vs-rest AUC of ``m_k`` (more labels, MNLI); ties count one half; mean over instructions
  (``std_auc``: population std over instructions);
- ``cal_acc``: accuracy after a per-instruction calibration set without labels: two labels, the threshold is the
  median margin of the instruction's instances (:func:`calibrated_answers`); ``std_cal_acc`` its std over instructions;
- ``flip_rate`` / ``flip_rate_cal``: share of (instruction, instance) cells whose answer (parsed / calibrated) under a
  perturbed instruction differs from the answer under the clean instruction of the same index (:func:`flip_rate`);
- ``margin_sd``: SD over a group's instructions of each instance's margin, averaged over instances (:func:`margin_sd`);
- ``margin_rank``: Spearman correlation over instances of the margin under a perturbed instruction with the margin under
  the clean instruction of the same index, averaged over instructions (:func:`margin_rank`): a consistency that needs
  no threshold and does not move with the margins' scale, so a weaker model is not penalised for sitting near one;
- ``posix``: prompt sensitivity index of Chatterjee et al. (EMNLP 2024) over a group's instructions (:func:`posix`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

#: ``model`` label of the base model without adapter in predictions and summaries.
BASE_LABEL = "base"
UNIT = ["model", "task", "group"]
LABEL_FREE_COLUMNS = ["auc", "std_auc", "cal_acc", "std_cal_acc", "flip_rate", "flip_rate_cal", "margin_sd", "posix",
                      "margin_rank"]
SUMMARY_COLUMNS = [
    "model", "task", "group", "n_instructions", "n_instances", "mean_acc", "std_acc", "ci_low", "ci_high",
    "drop_rate", "worst_acc", "best_acc", "spread", "consistency", "fleiss_kappa", *LABEL_FREE_COLUMNS,
]
NAN = float("nan")


def instruction_accuracy(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model x task x group x instruction (column ``acc``)."""
    keys = UNIT + ["instruction_id"]
    return predictions.groupby(keys, sort=True)["correct"].mean().rename("acc").reset_index()


def mean_std(accs) -> tuple[float, float]:
    """Mean and population standard deviation of per-instruction accuracies."""
    a = np.asarray(accs, dtype=float)
    return float(a.mean()), float(a.std(ddof=0))


def pooled_std(means, stds, axis: int = 0):
    """Std over instructions pooled over tasks: the paper's Table 3 "Average" std, the one every table, Figure 3 and
    the paired comparison report as "std".

    The population std of all per-instruction accuracies of equally many instructions per task, from each task's
    mean and population std along ``axis``: ``sqrt(mean(std**2) + var(mean))``. A float for 1-D input, else an array.
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    out = np.sqrt(np.mean(np.square(stds), axis=axis) + np.var(means, axis=axis))
    return float(out) if np.ndim(out) == 0 else out


def mean_task_std(stds, axis: int = 0):
    """Mean of per-task stds over instructions (not the pooled "std"; Table 1's per-category std is this one)."""
    out = np.mean(np.asarray(stds, dtype=float), axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def drop_rate(acc: float, clean_acc: float) -> float:
    """Performance drop rate against clean instructions, ``1 - acc / clean_acc`` (NaN when clean is 0)."""
    return float("nan") if not clean_acc else 1.0 - acc / clean_acc


def correctness_matrix(frame: pd.DataFrame, value: str = "correct") -> pd.DataFrame:
    """Instructions x instances table of ``value`` for one model x task x group."""
    return frame.pivot(index="instruction_id", columns="instance_id", values=value)


def consistency_rate(preds: pd.DataFrame) -> float:
    """Share of instances (columns) answered identically under every instruction (rows)."""
    return float((preds.nunique(axis=0, dropna=False) == 1).mean())


def fleiss_kappa(preds: pd.DataFrame) -> float:
    """Fleiss' kappa with instructions as raters and instances as subjects (categories: every answer seen).

    NaN when chance agreement is 1 (every answer the same category), where kappa is undefined.
    """
    counts = preds.T.apply(lambda col: col.value_counts(dropna=False), axis=1).fillna(0).to_numpy(float)
    n_raters = counts.sum(axis=1)
    if not np.all(n_raters == n_raters[0]) or n_raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of instructions for every instance")
    n = n_raters[0]
    p_i = (np.square(counts).sum(axis=1) - n) / (n * (n - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    p_bar, p_e = p_i.mean(), np.square(p_j).sum()
    return float("nan") if np.isclose(p_e, 1.0) else float((p_bar - p_e) / (1 - p_e))


def bootstrap_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean accuracy over instructions.

    ``correct`` is instructions x instances (0/1). Instances are resampled with replacement, the same draw for
    every instruction (paired), so the interval reflects the instance sample with the instructions held fixed.
    """
    per_instance = np.asarray(correct, dtype=float).mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, per_instance.size, size=(n_boot, per_instance.size))
    means = per_instance[draws].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


# ------------------------------------------------------------------------------------------------ label-free
def label_score_matrix(frame: pd.DataFrame, column: str = "label_scores") -> tuple[list[str], np.ndarray] | None:
    """Labels (in stored order) and the ``[rows, labels]`` matrix of a JSON column; None when any row has none.

    Raises when rows name different labels (they were scored under different label sets).
    """
    if column not in frame.columns or frame.empty:
        return None
    parsed = [json.loads(v) if isinstance(v, str) else {} for v in frame[column]]
    if any(not p for p in parsed):
        return None
    labels = list(parsed[0])
    if any(list(p) != labels for p in parsed):
        raise ValueError(f"rows of {column!r} name different labels (first: {labels}); score every row of a task "
                         "with the same label words (one evaluation run).")
    return labels, np.array([[p[lab] for lab in labels] for p in parsed], dtype=float)


def log_odds(scores: np.ndarray) -> np.ndarray:
    """``m_k = s_k - log sum_{j != k} exp(s_j)`` over the last axis (two labels: ``m_1 = s_1 - s_0 = -m_0``)."""
    s = np.asarray(scores, dtype=float)
    out = np.empty_like(s)
    for k in range(s.shape[-1]):
        others = np.delete(s, k, axis=-1)
        top = others.max(axis=-1)
        out[..., k] = s[..., k] - (top + np.log(np.exp(others - top[..., None]).sum(axis=-1)))
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Share of (positive, negative) pairs where the positive scores higher, ties one half; NaN if a side is empty."""
    score, positive = np.asarray(score, dtype=float), np.asarray(positive, dtype=bool)
    pos, neg = score[positive], score[~positive]
    if not pos.size or not neg.size:
        return NAN
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def instruction_auc(scores: np.ndarray, gold: np.ndarray) -> float:
    """ROC AUC of one instruction: ``scores`` ``[instances, labels]``, ``gold`` the gold label's index per instance.

    Two labels: AUC of the margin ``s_1 - s_0``. More labels: mean over labels k of the one-vs-rest AUC of ``m_k``
    (:func:`log_odds`, which orders instances as the softmax probability of k does), over the labels that occur
    both as gold and not as gold. NaN when no label does.
    """
    m, gold = log_odds(scores), np.asarray(gold)
    ks = [1] if m.shape[1] == 2 else range(m.shape[1])
    aucs = [a for a in (roc_auc(m[:, k], gold == k) for k in ks) if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else NAN


def calibrated_answers(scores: np.ndarray) -> np.ndarray:
    """Label index per instance after a calibration set from one instruction's scores alone (no gold labels).

    Two labels: ``l_1`` when the margin ``s_1 - s_0`` exceeds the median margin over the instruction's instances,
    else ``l_0`` (so half the instances get each label; ties at the median go to ``l_0``). More labels: each label's
    score minus its median over the instances, then the highest (ties: the first label).
    """
    s = np.asarray(scores, dtype=float)
    if s.shape[1] == 2:
        margin = s[:, 1] - s[:, 0]
        return (margin > np.median(margin)).astype(int)
    return (s - np.median(s, axis=0)).argmax(axis=1)


def flip_rate(answers: pd.DataFrame, clean_answers: pd.DataFrame) -> float:
    """Share of (instruction, instance) cells answered differently than under the clean instruction of the same index.

    Both tables are instructions (index: ``instruction_id``) x instances; instruction i of a perturbed group is
    compared with clean instruction i on the same instance (the paper's prompt set perturbs clean instruction i into
    instruction i of every other group). NaN when the two tables do not cover the same instructions and instances.
    """
    if not (answers.index.equals(clean_answers.index) and answers.columns.equals(clean_answers.columns)):
        return NAN
    return float((answers.to_numpy() != clean_answers.to_numpy()).mean())


def margin_sd(scores: np.ndarray) -> float:
    """Mean over instances of the population SD over instructions of the instance's margin.

    ``scores``: ``[instructions, instances, labels]``. Two labels: the margin ``s_1 - s_0``; more labels: the SD of
    each ``m_k`` (:func:`log_odds`), averaged over labels. In nats; NaN with fewer than two instructions.
    """
    m = log_odds(scores)
    if m.shape[0] < 2:
        return NAN
    sd = m.std(axis=0)  # [instances, labels]
    return float((sd[:, 1] if m.shape[2] == 2 else sd.mean(axis=1)).mean())


def margin_rank(scores: np.ndarray, clean_scores: np.ndarray) -> float:
    """Mean over instructions i of the Spearman correlation over instances between the margin under instruction i
    (``scores``: ``[instructions, instances, labels]``) and under clean instruction i (``clean_scores``, same shape).

    Two labels: the margin ``s_1 - s_0``; more labels: each ``m_k`` (:func:`log_odds`), correlations averaged over
    labels. Ties get average ranks; an instruction whose margins are all equal on either side is left out; NaN when
    the shapes differ or no instruction is left.
    """
    a, b = log_odds(scores), log_odds(clean_scores)
    if a.shape != b.shape:
        return NAN
    ks = [1] if a.shape[2] == 2 else range(a.shape[2])
    rhos = []
    for i in range(a.shape[0]):
        for k in ks:
            ra, rb = pd.Series(a[i, :, k]).rank().to_numpy(), pd.Series(b[i, :, k]).rank().to_numpy()
            if ra.std() > 0 and rb.std() > 0:
                rhos.append(float(np.corrcoef(ra, rb)[0, 1]))
    return float(np.mean(rhos)) if rhos else NAN


def posix(scores: np.ndarray, responses: np.ndarray, n_tokens: np.ndarray) -> float:
    """Prompt sensitivity index (POSIX; Chatterjee et al., EMNLP 2024, Eq. 1) over one group's instructions.

    For each instance the group's N instructions are the intent-aligned prompts ``x_1 .. x_N``; ``y_j`` is the
    model's answer under ``x_j`` (``responses[j, n]``, a label index) and ``L_{y_j}`` its number of scored tokens::

        psi_n = 1 / (N (N - 1)) * sum_i sum_{j != i} | (1 / L_{y_j}) * log( P(y_j | x_i) / P(y_j | x_j) ) |

    with ``log P(y | x_i) = scores[i, n, y]``; POSIX is the mean of ``psi_n`` over instances. 0 when every
    instruction gives every answer the same likelihood; NaN with fewer than two instructions.
    """
    s, r = np.asarray(scores, dtype=float), np.asarray(responses, dtype=int)
    N = s.shape[0]
    if N < 2:
        return NAN
    # ll[i, j, n] = log P(y_j | x_i): the score under instruction i of the answer given under instruction j
    ll = s[np.arange(N)[:, None, None], np.arange(s.shape[1])[None, None, :], r[None, :, :]]
    own = ll[np.arange(N), np.arange(N)]  # [j, n] = log P(y_j | x_j)
    psi = (np.abs(ll - own[None]) / np.asarray(n_tokens, dtype=float)[r][None]).sum(axis=(0, 1)) / (N * (N - 1))
    return float(psi.mean())


def _label_free(frame: pd.DataFrame) -> tuple[dict, pd.DataFrame | None, np.ndarray | None]:
    """Label-free metrics of one model x task x group (those against the clean group excepted), its calibrated
    answers table and its ``[instructions, instances, labels]`` scores."""
    nan = dict(auc=NAN, std_auc=NAN, cal_acc=NAN, std_cal_acc=NAN, margin_sd=NAN, posix=NAN)
    frame = frame.sort_values(["instruction_id", "instance_id"], kind="stable")
    table = label_score_matrix(frame)
    if table is None:
        return nan, None, None
    labels, flat = table
    ids, inst = frame["instruction_id"].unique(), frame["instance_id"].unique()
    scores = flat.reshape(len(ids), len(inst), len(labels))
    index = {lab: k for k, lab in enumerate(labels)}
    gold = frame["gold"].map(index).fillna(-1).to_numpy(int).reshape(len(ids), len(inst))
    aucs = np.array([instruction_auc(scores[i], gold[i]) for i in range(len(ids))])
    answers = np.stack([calibrated_answers(scores[i]) for i in range(len(ids))])
    cal = (answers == gold).mean(axis=1)
    out = dict(nan, cal_acc=float(cal.mean()), std_cal_acc=float(cal.std()), margin_sd=margin_sd(scores))
    if not np.isnan(aucs).all():
        out.update(auc=float(np.nanmean(aucs)), std_auc=float(np.nanstd(aucs)))
    responses = frame["prediction"].map(index)
    tokens = label_score_matrix(frame.iloc[:1], "label_tokens")
    if not responses.isna().any() and tokens is not None and tokens[0] == labels:
        out["posix"] = posix(scores, responses.to_numpy(int).reshape(len(ids), len(inst)), tokens[1][0])
    calibrated = pd.DataFrame(np.asarray(labels, dtype=object)[answers], index=pd.Index(ids, name="instruction_id"),
                              columns=pd.Index(inst, name="instance_id"))
    return out, calibrated, scores


def summarize(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0, clean_group: str = "clean") -> pd.DataFrame:
    """One row per model x task x group with :data:`SUMMARY_COLUMNS` (module doc); drop and flip rates are NaN
    without a clean group, and for the clean group itself; label-free metrics are NaN without label scores."""
    rows, answer_tables = [], {}
    for (model, task, group), frame in predictions.groupby(UNIT, sort=True):
        correct = correctness_matrix(frame)
        if correct.isna().any().any():
            raise ValueError(f"{model}/{task}/{group}: instructions were scored on different instances")
        accs = correct.mean(axis=1).to_numpy()
        answers = correctness_matrix(frame, "prediction")
        mean, std = mean_std(accs)
        low, high = bootstrap_ci(correct.to_numpy(), n_boot, seed)
        label_free, calibrated, scores = _label_free(frame)
        answer_tables[model, task, group] = answers, calibrated, scores
        rows.append(dict(
            model=model, task=task, group=group, n_instructions=len(accs), n_instances=correct.shape[1],
            mean_acc=mean, std_acc=std, ci_low=low, ci_high=high, worst_acc=float(accs.min()),
            best_acc=float(accs.max()), spread=float(accs.max() - accs.min()),
            consistency=consistency_rate(answers),
            fleiss_kappa=fleiss_kappa(answers) if len(accs) > 1 else float("nan"), **label_free,
        ))
    against_clean = ("drop_rate", "flip_rate", "flip_rate_cal", "margin_rank")
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in against_clean])
    clean = summary[summary["group"] == clean_group].set_index(["model", "task"])["mean_acc"]
    summary["drop_rate"] = [
        drop_rate(acc, clean.get((m, t), float("nan"))) for m, t, acc in summary[["model", "task", "mean_acc"]].itertuples(index=False)
    ]
    for k, column in enumerate(("flip_rate", "flip_rate_cal", "margin_rank")):
        summary[column] = [_against_clean(answer_tables, key, clean_group, k) for key in zip(*(summary[c] for c in UNIT))]
    return summary[SUMMARY_COLUMNS]


def _against_clean(tables: dict, key: tuple, clean_group: str, which: int) -> float:
    """Flip rate (parsed ``which=0``, calibrated 1) or margin rank correlation (2) of one summary row against its
    clean group (NaN for the clean group itself or without one)."""
    model, task, group = key
    reference = tables.get((model, task, clean_group))
    if group == clean_group or reference is None or tables[key][which] is None or reference[which] is None:
        return NAN
    if which < 2:
        return flip_rate(tables[key][which], reference[which])
    mine, theirs = tables[key][1], reference[1]  # the calibrated tables: same instructions and instances?
    if not (mine.index.equals(theirs.index) and mine.columns.equals(theirs.columns)):
        return NAN
    return margin_rank(tables[key][2], reference[2])
