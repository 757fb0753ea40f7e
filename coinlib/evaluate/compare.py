"""Paired comparison of two evaluated models (COIN against CIT) with bootstrap intervals.

Both models answer the same instances under the same instructions, so their difference is measured per instance
and resampled jointly: each bootstrap replicate draws every task's instances with replacement (the same draw for
both models, for every group and instruction) and recomputes, per group,

- ``acc``: accuracy averaged over instructions, instances and tasks (the tables' "Average" accuracy);
- ``std``: the std over instructions pooled over tasks (:func:`coinlib.evaluate.metrics.pooled_std`, the tables'
  and Figure 3's "std", the paper's Table 3 "Average").

Rows come per group and for ``"average"`` (every group pooled: mean accuracy and pooled std over groups).
``p_better`` is the share of replicates in which model ``a`` is more accurate than model ``b``.

The label-free metrics of :mod:`coinlib.evaluate.metrics` come with the same kind of interval (columns
``{metric}_a``, ``_b``, ``_diff``, ``_diff_low``, ``_diff_high``), from the same seed and the same draws, averaged
over instructions and tasks like ``acc``: ``auc`` (recomputed on every resample), ``cal_acc`` (thresholds set once on
the full sample and held fixed), ``std_cal_acc`` (the population std of the per-instruction calibrated accuracies
within a task, then the mean over tasks, :func:`coinlib.evaluate.metrics.mean_task_std`, not the pooled ``std``;
the two agree for one task, as in the sentiment study), ``flip_rate`` and ``flip_rate_cal``
(perturbed groups only; ``"average"`` pools the perturbed groups). They are NaN where the predictions carry no label
scores (``generate`` mode).

Across training seeds (the same evaluation sample, one paired bootstrap per seed), :func:`across_seeds` tests the
per-seed differences: a paired t-test with its t-interval, an exact sign-flip permutation test, and the minimum
detectable difference of the design (:func:`min_detectable_difference`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from coinlib.core.groups import ALL_GROUPS
from coinlib.evaluate.metrics import (
    calibrated_answers,
    label_score_matrix,
    log_odds,
    pooled_std,
)

LABEL_FREE = ("auc", "cal_acc", "std_cal_acc", "flip_rate", "flip_rate_cal")
COMPARE_COLUMNS = [
    "group", "model_a", "model_b", "acc_a", "acc_b", "acc_diff", "acc_diff_low", "acc_diff_high", "p_better",
    "std_a", "std_b", "std_diff", "std_diff_low", "std_diff_high", "n_tasks",
    "n_instances", *[f"{m}_{part}" for m in LABEL_FREE for part in ("a", "b", "diff", "diff_low", "diff_high")],
]
CLEAN = "clean"
NAN = float("nan")


def _cube(predictions: pd.DataFrame, model: str, groups: list[str]) -> dict[str, np.ndarray]:
    """Per task, the correctness array ``[group, instruction, instance]`` of ``model`` (instances sorted by id)."""
    cubes = {}
    for task, frame in predictions[predictions["model"] == model].groupby("task", sort=True):
        table = frame.pivot_table(index=["group", "instruction_id"], columns="instance_id", values="correct",
                                  aggfunc="first")
        missing = [g for g in groups if g not in table.index.get_level_values("group")]
        if missing or table.isna().any().any():
            raise ValueError(f"model {model!r}, task {task!r}: groups {missing or groups} are not answered for every "
                             "instance under every instruction; evaluate both models on the same settings.")
        per_group = [table.loc[g].sort_index(axis=1).to_numpy(dtype=float) for g in groups]
        if len({a.shape for a in per_group}) != 1:
            raise ValueError(f"model {model!r}, task {task!r}: groups have different numbers of instructions "
                             f"{[a.shape[0] for a in per_group]}; compare groups of equal size.")
        cubes[task] = np.stack(per_group)
    return cubes


def _stats(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group accuracy and std over instructions, from ``[group, instruction, ..., instance]``."""
    per_instruction = cube.mean(-1)
    return per_instruction.mean(1), per_instruction.std(1)


def paired_bootstrap(predictions: pd.DataFrame, model_a: str, model_b: str, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> pd.DataFrame:
    """``model_a`` minus ``model_b`` per group and for all groups, with percentile intervals (see module doc)."""
    for model in (model_a, model_b):
        if not (predictions["model"] == model).any():
            raise ValueError(f"model {model!r} is not in the predictions (models: "
                             f"{sorted(predictions['model'].unique())}); evaluate it first.")
    groups = list(dict.fromkeys(predictions.loc[predictions["model"] == model_a, "group"]))
    cubes = {m: _cube(predictions, m, groups) for m in (model_a, model_b)}
    tasks = sorted(cubes[model_a])
    if sorted(cubes[model_b]) != tasks or any(cubes[model_a][t].shape != cubes[model_b][t].shape for t in tasks):
        raise ValueError(f"{model_a!r} and {model_b!r} were not evaluated on the same tasks, instructions and "
                         "instances; evaluate both in one run (evaluate.adapters) so they share the sample.")
    rng = np.random.default_rng(seed)
    point = {m: [_stats(cubes[m][t]) for t in tasks] for m in cubes}
    boot = {m: [] for m in cubes}
    for t in tasks:
        n = cubes[model_a][t].shape[-1]
        idx = rng.integers(0, n, size=(n_boot, n))
        for m in cubes:
            boot[m].append(_stats(cubes[m][t][:, :, idx]))  # cube [group, instruction, boot, instance]

    def over_tasks(per_task: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        accs, stds = (np.stack([s[k] for s in per_task]) for k in (0, 1))  # [task, group, ...]
        acc, std = accs.mean(0), pooled_std(accs, stds, axis=0)
        return (np.concatenate([acc, acc.mean(0, keepdims=True)]),
                np.concatenate([std, np.reshape(pooled_std(acc, std, axis=0), (1, *std.shape[1:]))]))

    (acc_a, std_a), (acc_b, std_b) = over_tasks(point[model_a]), over_tasks(point[model_b])
    (bacc_a, bstd_a), (bacc_b, bstd_b) = over_tasks(boot[model_a]), over_tasks(boot[model_b])
    tail = (1 - level) / 2 * 100
    acc_lo, acc_hi = np.percentile(bacc_a - bacc_b, [tail, 100 - tail], axis=-1)
    std_lo, std_hi = np.percentile(bstd_a - bstd_b, [tail, 100 - tail], axis=-1)
    n_instances = sum(cubes[model_a][t].shape[-1] for t in tasks)
    table = pd.DataFrame({
        "group": groups + [ALL_GROUPS], "model_a": model_a, "model_b": model_b, "acc_a": acc_a, "acc_b": acc_b,
        "acc_diff": acc_a - acc_b, "acc_diff_low": acc_lo, "acc_diff_high": acc_hi,
        "p_better": ((bacc_a - bacc_b) > 0).mean(-1), "std_a": std_a, "std_b": std_b,
        "std_diff": std_a - std_b, "std_diff_low": std_lo, "std_diff_high": std_hi,
        "n_tasks": len(tasks), "n_instances": n_instances,
    })
    extra = _label_free_paired(predictions, (model_a, model_b), groups, tasks, n_boot, seed, level)
    return pd.concat([table, extra], axis=1)[COMPARE_COLUMNS]


# ------------------------------------------------------------------------------------------------ label-free
def weighted_auc(scores: np.ndarray, gold: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`coinlib.evaluate.metrics.instruction_auc` of one instruction with instance weights ``[replicates,
    instances]`` (bootstrap counts: each pair counts with the product of its instances' weights)."""
    m, weights = log_odds(scores), np.asarray(weights, dtype=float)
    per_label = []
    for k in ([1] if m.shape[1] == 2 else range(m.shape[1])):
        pos = gold == k
        if pos.all() or not pos.any():
            continue
        diff = m[pos, k][:, None] - m[~pos, k][None, :]
        wins = (diff > 0) + 0.5 * (diff == 0)
        wp, wn = weights[:, pos], weights[:, ~pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_label.append(((wp @ wins) * wn).sum(1) / (wp.sum(1) * wn.sum(1)))
    if not per_label:
        return np.full(len(weights), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_label, axis=0)


def _task_arrays(frame: pd.DataFrame, groups: list[str]) -> dict[str, object]:
    """Per-instance arrays of one model and task: calibrated correctness and flips ``[group, instruction, instance]``
    (NaN where undefined) and per (group, instruction) the label scores and gold indices for the AUC."""
    frame = frame.sort_values(["instruction_id", "instance_id"], kind="stable")
    by_group = {g: f for g, f in frame.groupby("group", sort=False)}
    shape = (len(groups), by_group[groups[0]]["instruction_id"].nunique(), by_group[groups[0]]["instance_id"].nunique())
    out = {"cal_acc": np.full(shape, np.nan), "flip_rate": np.full(shape, np.nan),
           "flip_rate_cal": np.full(shape, np.nan), "auc": {}}
    answers, calibrated = {}, {}
    for gi, g in enumerate(groups):
        f = by_group[g]
        if "prediction" in f.columns:
            answers[g] = f["prediction"].to_numpy(object).reshape(shape[1:])
        table = label_score_matrix(f) if {"label_scores", "gold"} <= set(f.columns) else None
        if table is None:
            continue
        labels, flat = table
        scores = flat.reshape(*shape[1:], len(labels))
        gold = f["gold"].map({lab: k for k, lab in enumerate(labels)}).fillna(-1).to_numpy(int).reshape(shape[1:])
        calibrated[g] = np.stack([calibrated_answers(s) for s in scores])
        out["cal_acc"][gi] = calibrated[g] == gold
        out["auc"].update({(gi, i): (scores[i], gold[i]) for i in range(shape[1])})
    for gi, g in enumerate(groups):
        if g != CLEAN and CLEAN in groups:
            for name, source in (("flip_rate", answers), ("flip_rate_cal", calibrated)):
                if g in source and CLEAN in source:
                    out[name][gi] = source[g] != source[CLEAN]
    return out


def _label_free_stats(arrays: dict, weights: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """``[replicates, group]`` of each label-free metric, for instance ``weights`` ``[replicates, instance]``."""
    n = weights.shape[1]
    per_instruction = {m: np.einsum("bn,gin->bgi", weights, arrays[m]) / n for m in ("cal_acc", "flip_rate",
                                                                                    "flip_rate_cal")}
    stats = {m: v.mean(-1) for m, v in per_instruction.items()}
    stats["std_cal_acc"] = per_instruction["cal_acc"].std(-1)
    auc = np.full((len(weights), n_groups), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for gi in range(n_groups):
            per_instruction = [weighted_auc(s, gold, weights) for (g, _), (s, gold) in arrays["auc"].items() if g == gi]
            if per_instruction:
                auc[:, gi] = np.nanmean(per_instruction, axis=0)
    stats["auc"] = auc
    return stats


def _label_free_paired(predictions: pd.DataFrame, models: tuple[str, str], groups: list[str], tasks: list[str],
                       n_boot: int, seed: int, level: float) -> pd.DataFrame:
    """The label-free columns of :func:`paired_bootstrap` (module doc), one row per group and ``"average"``."""
    rng = np.random.default_rng(seed)  # the same seed and per-task draws as the accuracy replicates
    point = {m: [] for m in models}
    boot = {m: [] for m in models}
    for t in tasks:
        arrays = {m: _task_arrays(predictions[(predictions["model"] == m) & (predictions["task"] == t)], groups)
                  for m in models}
        n = arrays[models[0]]["cal_acc"].shape[-1]
        idx = rng.integers(0, n, size=(n_boot, n))
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
        for m in models:
            point[m].append(_label_free_stats(arrays[m], np.ones((1, n)), len(groups)))
            boot[m].append(_label_free_stats(arrays[m], counts, len(groups)))

    def pooled(per_task: list[dict], metric: str) -> np.ndarray:
        """``[replicates, group + average]``: mean over tasks, then the average over groups (NaN-aware)."""
        by_group = np.nanmean([s[metric] for s in per_task], axis=0)
        return np.concatenate([by_group, np.nanmean(by_group, axis=1, keepdims=True)], axis=1)

    tail = (1 - level) / 2 * 100
    columns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for metric in LABEL_FREE:
            a, b = (pooled(point[m], metric)[0] for m in models)
            diff = pooled(boot[models[0]], metric) - pooled(boot[models[1]], metric)
            low, high = np.nanpercentile(diff, [tail, 100 - tail], axis=0)
            columns.update({f"{metric}_a": a, f"{metric}_b": b, f"{metric}_diff": a - b, f"{metric}_diff_low": low,
                            f"{metric}_diff_high": high})
    return pd.DataFrame(columns)


# ------------------------------------------------------------------------------------------------ across seeds
#: Metrics of :func:`paired_bootstrap` (each with ``_a``, ``_b``, ``_diff``, ``_diff_low``, ``_diff_high`` columns).
PAIRED_METRICS = ("acc", "std", *LABEL_FREE)
SEED_COLUMNS = ["n_seeds", "mean_a", "mean_b", "mean_diff", "sd_diff", "n_positive", "t", "p_t", "ci_low", "ci_high",
                "p_perm", "se_inst", "se_total", "mdd"]


def long_format(paired: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """:func:`paired_bootstrap` output as one row per group x metric (:data:`PAIRED_METRICS`) with columns ``group,
    metric, a, b, diff, diff_low, diff_high, se``; ``se`` is the bootstrap standard error read from the percentile
    interval as its width / (2 z), z the normal quantile of ``level``."""
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2)
    parts = []
    for metric in PAIRED_METRICS:
        part = paired[["group", *[f"{metric}_{p}" for p in ("a", "b", "diff", "diff_low", "diff_high")]]].copy()
        part.columns = ["group", "a", "b", "diff", "diff_low", "diff_high"]
        part.insert(1, "metric", metric)
        part["se"] = (part["diff_high"] - part["diff_low"]) / (2 * z)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def sign_flip_p(diffs) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of paired differences (H0: symmetric about 0).

    Every one of the ``2^n`` sign patterns is enumerated; p is the share whose |mean| reaches the observed |mean|.
    With n seeds the smallest attainable p is ``2 / 2^n`` (0.25 for 3 seeds, 0.0625 for 5).
    """
    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or np.isnan(d).any():
        return NAN
    if d.size > 20:
        raise ValueError(f"sign_flip_p enumerates 2^n patterns; n={d.size} is too many (at most 20)")
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d.size, indexing="ij")).reshape(d.size, -1).T
    means = np.abs(signs @ d) / d.size
    return float((means >= abs(d.mean()) - 1e-12).mean())


def min_detectable_difference(sd_seed: float, se_inst: float, n_seeds: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest true difference a two-sided test at ``alpha`` detects with probability ``power``.

    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sqrt(sd_seed^2 / n + se_inst^2)``: ``sd_seed`` is the seed-to-seed SD
    of the paired differences (training randomness; shrinks with more seeds), ``se_inst`` the within-seed bootstrap
    standard error (the shared instance sample; the same for every seed, so more seeds do not shrink it). NaN with
    fewer than two seeds.
    """
    from scipy import stats

    if n_seeds < 2 or np.isnan(sd_seed) or np.isnan(se_inst):
        return NAN
    df = n_seeds - 1
    factor = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
    return float(factor * np.sqrt(sd_seed ** 2 / n_seeds + se_inst ** 2))


def seeds_needed(sd_seed: float, se_inst: float, target: float, alpha: float = 0.05, power: float = 0.8,
                 max_seeds: int = 100) -> int | None:
    """Fewest seeds whose :func:`min_detectable_difference` is at most ``target``; None if ``max_seeds`` do not suffice
    (when ``se_inst`` alone exceeds about ``target / 2.8`` no number of seeds does: evaluate more instances)."""
    for n in range(2, max_seeds + 1):
        if min_detectable_difference(sd_seed, se_inst, n, alpha, power) <= target:
            return n
    return None


def seed_test(a, b, se_inst=None, alpha: float = 0.05, power: float = 0.8) -> dict[str, float]:
    """Paired test over seeds of ``a - b`` (one value per seed, paired by seed): :data:`SEED_COLUMNS`.

    ``t``, ``p_t``: one-sample t-test of the differences against 0 (``scipy.stats.ttest_1samp``, df n - 1), with the
    t-interval ``ci_low``, ``ci_high`` at level 1 - alpha; it treats the evaluation sample as fixed (the seeds share
    it).
    ``p_perm``: exact sign-flip permutation test (:func:`sign_flip_p`). ``se_inst``: mean over seeds of the within-seed
    bootstrap standard errors (NaN when not given); ``se_total = sqrt(sd_diff^2 / n + se_inst^2)``; ``mdd``: the
    :func:`min_detectable_difference` at ``alpha`` and ``power``.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    n = int(d.size)
    se = float(np.mean(se_inst)) if se_inst is not None and len(se_inst) else NAN
    out = dict(n_seeds=n, mean_a=float(a.mean()) if n else NAN, mean_b=float(b.mean()) if n else NAN,
               mean_diff=float(d.mean()) if n else NAN, sd_diff=NAN, n_positive=int((d > 0).sum()), t=NAN, p_t=NAN,
               ci_low=NAN, ci_high=NAN, p_perm=sign_flip_p(d) if n else NAN, se_inst=se, se_total=NAN, mdd=NAN)
    if n < 2 or np.isnan(d).any():
        return out
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1) * sd / np.sqrt(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_1samp(d, 0.0)
    out.update(sd_diff=sd, t=float(test.statistic), p_t=float(test.pvalue), ci_low=out["mean_diff"] - half,
               ci_high=out["mean_diff"] + half, se_total=float(np.sqrt(sd ** 2 / n + se ** 2)),
               mdd=min_detectable_difference(sd, se, n, alpha, power))
    return out


def across_seeds(per_seed: pd.DataFrame, by=("format", "arm", "reference", "group", "metric"), alpha: float = 0.05,
                 power: float = 0.8) -> pd.DataFrame:
    """:func:`seed_test` per ``by`` cell of a table of per-seed paired results (columns ``seed``, ``a``, ``b``, ``se``
    and ``by``, e.g. :func:`long_format` rows of several seeds); one row per cell with ``seeds`` (the seeds used)."""
    by = [c for c in by if c in per_seed.columns]
    rows = []
    for key, cell in per_seed.sort_values("seed", kind="stable").groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        res = seed_test(cell["a"], cell["b"], cell["se"].to_numpy() if "se" in cell else None, alpha, power)
        rows.append({**dict(zip(by, key)), "seeds": " ".join(str(s) for s in cell["seed"]), **res})
    return pd.DataFrame(rows, columns=[*by, "seeds", *SEED_COLUMNS])
