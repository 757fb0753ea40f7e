"""Robustness metrics over a tidy predictions table (one row per model x task x group x instruction x instance).

Accuracies are fractions in [0, 1]. Spread over instructions uses the population standard deviation
(``numpy.std``, ddof 0), as the paper's evaluation code does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNIT = ["model", "task", "group"]
SUMMARY_COLUMNS = [
    "model", "task", "group", "n_instructions", "n_instances", "mean_acc", "std_acc", "ci_low", "ci_high",
    "drop_rate", "worst_acc", "best_acc", "spread", "consistency", "fleiss_kappa",
]


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


def summarize(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0, clean_group: str = "clean") -> pd.DataFrame:
    """One row per model x task x group with :data:`SUMMARY_COLUMNS`; drop rate is NaN without a clean group."""
    rows = []
    for (model, task, group), frame in predictions.groupby(UNIT, sort=True):
        correct = correctness_matrix(frame)
        if correct.isna().any().any():
            raise ValueError(f"{model}/{task}/{group}: instructions were scored on different instances")
        accs = correct.mean(axis=1).to_numpy()
        answers = correctness_matrix(frame, "prediction")
        mean, std = mean_std(accs)
        low, high = bootstrap_ci(correct.to_numpy(), n_boot, seed)
        rows.append(dict(
            model=model, task=task, group=group, n_instructions=len(accs), n_instances=correct.shape[1],
            mean_acc=mean, std_acc=std, ci_low=low, ci_high=high, worst_acc=float(accs.min()),
            best_acc=float(accs.max()), spread=float(accs.max() - accs.min()),
            consistency=consistency_rate(answers),
            fleiss_kappa=fleiss_kappa(answers) if len(accs) > 1 else float("nan"),
        ))
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c != "drop_rate"])
    clean = summary[summary["group"] == clean_group].set_index(["model", "task"])["mean_acc"]
    summary["drop_rate"] = [
        drop_rate(acc, clean.get((m, t), float("nan"))) for m, t, acc in summary[["model", "task", "mean_acc"]].itertuples(index=False)
    ]
    return summary[SUMMARY_COLUMNS]
