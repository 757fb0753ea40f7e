"""Metric-vs-step curves of a study's training runs, and comparisons at equal skill.

A run's curve is the base model (step 0), its part-way evaluations (``step<N>-<format>``, :mod:`checkpoints`) and
its final evaluation (``eval-<format>``), all on the same sample. A weaker model flips more answers near a decision
threshold, so a flip rate says little about instruction sensitivity until the models compared are equally skilled:
:func:`skill_matched` reads each reference curve (CIT, seed by seed) at the AUC of every other run's point, so an arm
is compared with the reference *when the reference was as good as it*. :func:`matched_intervals` gives each
matched difference a paired instance-bootstrap interval (every point resampled on the same instances).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scipy.stats import rankdata

from coinlib.evaluate.compare import CLEAN, _label_free_stats, _task_arrays
from coinlib.evaluate.metrics import log_odds, summarize
from coinlib.study.spec import BASE_KEY, StudySpec, arm_params, stop_steps
from coinlib.study.store import runs_dir

#: Metrics of a curve point: averages over tasks and groups (those against the clean group over the perturbed ones).
POINT_METRICS = ("auc", "cal_acc", "flip_rate_cal", "margin_rank")
#: Metrics compared at equal AUC.
MATCHED_METRICS = ("flip_rate_cal", "margin_rank")


def point_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    """:data:`POINT_METRICS` of one evaluation, plus ``clean_auc`` and ``n_instances`` (per task, the smallest)."""
    summary = summarize(predictions, n_boot=1)
    out = {m: float(summary[m].mean()) for m in POINT_METRICS}
    out["clean_auc"] = float(summary.loc[summary["group"] == "clean", "auc"].mean())
    out["n_instances"] = int(summary["n_instances"].min())
    return out


def curve_points(spec: StudySpec, fmt: str) -> pd.DataFrame:
    """One row per committed evaluation in ``fmt`` of a run that trains from the base model (arms that continue
    another arm's adapter are left out): ``arm, seed, step`` (0 for the base model, which starts every curve),
    ``stage`` and :func:`point_metrics`. Empty when nothing is committed."""
    root, rows = runs_dir(spec), []
    base = root / BASE_KEY / f"eval-{fmt}" / "predictions.parquet"
    if base.is_file():
        rows.append(dict(arm=BASE_KEY, seed=None, step=0, stage=f"eval-{fmt}", **point_metrics(pd.read_parquet(base))))
    at = spec.checkpoints.at if fmt == spec.checkpoints.format else []
    for arm, a in spec.arms.items():
        if a.continues:
            continue
        for seed in spec.seeds:
            P = arm_params(spec, arm, seed)
            stages = {f"step{s}-{fmt}": s for s in stop_steps(P, at)} | {f"eval-{fmt}": P.train.max_steps}
            for stage, step in stages.items():
                path = root / f"{arm}-s{seed}" / stage / "predictions.parquet"
                if path.is_file():
                    rows.append(dict(arm=arm, seed=seed, step=step, stage=stage,
                                     **point_metrics(pd.read_parquet(path))))
    columns = ["arm", "seed", "step", "stage", *POINT_METRICS, "clean_auc", "n_instances"]
    return pd.DataFrame(rows, columns=columns)


def reference_curve(points: pd.DataFrame, reference: str, seed: int) -> pd.DataFrame:
    """The reference arm's points of ``seed`` with the base model's (step 0), in step order."""
    mine = points[((points["arm"] == reference) & (points["seed"] == seed)) | (points["arm"] == BASE_KEY)]
    return mine.sort_values("step")


def skill_matched(points: pd.DataFrame, reference: str, metrics: tuple[str, ...] = MATCHED_METRICS,
                  min_curve_points: int = 3) -> pd.DataFrame:
    """Every trained point of another arm beside the reference curve of its seed read at the same AUC.

    The reference curve (:func:`reference_curve`) is interpolated linearly in AUC between its points (as ordered by
    AUC); a point outside the curve's AUC range, or of a seed whose curve has fewer than ``min_curve_points`` points
    (the base model and the final evaluation alone make a straight line, not a curve: sensitivity need not fall
    steadily with training), is not matched (``matched`` False, ``at_reference`` NaN): no extrapolation. One row
    per point and metric: ``arm, seed, step, auc, metric, value, at_reference, diff, matched, curve_points``.
    """
    rows = []
    others = points[(points["arm"] != reference) & (points["arm"] != BASE_KEY)]
    for (arm, seed), run in others.groupby(["arm", "seed"], sort=True):
        curve = reference_curve(points, reference, seed)
        trained = curve[curve["arm"] == reference]
        for _, p in run.sort_values("step").iterrows():
            for metric in metrics:
                ok = (len(trained) > 0 and len(curve) >= min_curve_points
                      and curve["auc"].min() <= p["auc"] <= curve["auc"].max())
                order = curve.sort_values("auc", kind="stable")
                at = float(np.interp(p["auc"], order["auc"], order[metric])) if ok else float("nan")
                rows.append(dict(arm=arm, seed=int(seed), step=int(p["step"]), auc=p["auc"], metric=metric,
                                 value=p[metric], at_reference=at, diff=p[metric] - at, matched=ok,
                                 curve_points=len(curve)))
    columns = ["arm", "seed", "step", "auc", "metric", "value", "at_reference", "diff", "matched", "curve_points"]
    return pd.DataFrame(rows, columns=columns)


def matched_only(matched: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`skill_matched` that were matched."""
    return matched[matched["matched"].astype(bool)]  # an empty column is of object dtype: not a mask


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per arm and metric over the matched points: their number, seeds, mean difference from the reference at equal
    AUC, and how many points lie above it."""
    ok = matched_only(matched)
    return (ok.groupby(["arm", "metric"], sort=True)
              .agg(points=("diff", "size"), seeds=("seed", "nunique"), mean_diff=("diff", "mean"),
                   above=("diff", lambda d: int((d > 0).sum())))
              .reset_index())


#: Metrics :func:`bootstrap_points` redraws.
BOOTSTRAP_METRICS = ("auc", "flip_rate_cal", "margin_rank")


def bootstrap_points(frames: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC, calibrated flip rate and margin rank correlation of each evaluation in ``frames`` (key -> predictions)
    over ``n_boot`` instance resamples shared by all of them (paired: the same draws for every key), as ``{key:
    {metric: [n_boot]}}``; averaged like :func:`point_metrics` (over tasks and groups; the last two over the perturbed
    groups). Calibrated answers keep their full-sample thresholds, as in
    :func:`coinlib.evaluate.compare.paired_bootstrap`."""
    first = next(iter(frames.values()))
    tasks, groups = sorted(first["task"].unique()), list(dict.fromkeys(first["group"]))
    rng = np.random.default_rng(seed)
    per: dict = {k: {m: [] for m in BOOTSTRAP_METRICS} for k in frames}
    for task in tasks:
        arrays = {k: _task_arrays(f[f["task"] == task], groups) for k, f in frames.items()}
        sizes = {k: a["cal_acc"].shape for k, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"bootstrap_points: {task} was not evaluated on the same groups, instructions and "
                             f"instances by every point ({sizes}); compare evaluations of one sample")
        n = next(iter(sizes.values()))[-1]
        idx = rng.integers(0, n, size=(n_boot, n))
        counts = np.zeros((n_boot, n))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
        for k, a in arrays.items():
            stats = _label_free_stats(a, counts, len(groups))
            per[k]["auc"].append(stats["auc"])
            per[k]["flip_rate_cal"].append(stats["flip_rate_cal"])
            per[k]["margin_rank"].append(_margin_rank_replicates(a, groups, idx))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the clean group has no flip rate
        return {k: {m: np.nanmean(np.nanmean(np.stack(v), axis=0), axis=1) for m, v in d.items()}
                for k, d in per.items()}


def _margin_rank_replicates(arrays: dict, groups: list[str], idx: np.ndarray) -> np.ndarray:
    """``[replicates, group]`` :func:`coinlib.evaluate.metrics.margin_rank` on the instances ``idx`` ``[replicates,
    instances]`` draws (a drawn instance counts as often as drawn; ties get average ranks)."""
    out = np.full((len(idx), len(groups)), np.nan)
    if CLEAN not in groups:
        return out
    clean = groups.index(CLEAN)
    for gi in range(len(groups)):
        rhos = []
        for (g, i), (scores, _) in arrays["auc"].items():
            if g != gi or gi == clean or (clean, i) not in arrays["auc"]:
                continue
            a, b = log_odds(scores), log_odds(arrays["auc"][(clean, i)][0])
            for k in ([1] if a.shape[1] == 2 else range(a.shape[1])):
                ra, rb = (rankdata(m[idx, k], axis=1) for m in (a, b))
                ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rhos.append((ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1)))
        if rhos:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[:, gi] = np.nanmean(rhos, axis=0)
    return out


def matched_intervals(spec: StudySpec, fmt: str, points: pd.DataFrame, matched: pd.DataFrame, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """For each matched row of :func:`skill_matched` (flip rate, margin rank): the difference from the reference
    curve in every paired instance resample (the point and the whole curve redrawn on the same instances, the curve
    read at the point's resampled AUC), as ``diff_low, diff_high`` (percentile interval) and ``resampled`` (the share
    of resamples in which the point stayed inside the curve's AUC range, the rest left out). Each seed's curve and
    points are read and redrawn once."""
    root, tail = runs_dir(spec), (1 - level) / 2 * 100
    rows = []
    ok_rows = matched_only(matched)
    ok_rows = ok_rows[ok_rows["metric"].isin(BOOTSTRAP_METRICS)]
    for seed_, of_seed in ok_rows.groupby("seed", sort=True):
        curve = reference_curve(points, spec.reference, seed_)
        keys = sorted(set(zip(of_seed["arm"], of_seed["step"])))
        frames = {("curve", i): pd.read_parquet(_predictions_path(root, r)) for i, (_, r) in enumerate(curve.iterrows())}
        for arm, step in keys:
            here = points[(points["arm"] == arm) & (points["seed"] == seed_) & (points["step"] == step)]
            frames[(arm, step)] = pd.read_parquet(_predictions_path(root, here.iloc[0]))
        boot = bootstrap_points(frames, n_boot, seed)
        auc = np.stack([boot[("curve", i)]["auc"] for i in range(len(curve))], axis=1)  # [n_boot, curve point]
        order = np.argsort(auc, axis=1, kind="stable")
        for _, r in of_seed.iterrows():
            point, metric = boot[(r["arm"], r["step"])], r["metric"]
            values = np.stack([boot[("curve", i)][metric] for i in range(len(curve))], axis=1)
            diffs = np.full(n_boot, np.nan)
            for b in range(n_boot):
                if auc[b].min() <= point["auc"][b] <= auc[b].max():
                    diffs[b] = point[metric][b] - np.interp(point["auc"][b], auc[b][order[b]], values[b][order[b]])
            ok = diffs[~np.isnan(diffs)]
            low, high = np.percentile(ok, [tail, 100 - tail]) if len(ok) else (np.nan, np.nan)
            rows.append(dict(arm=r["arm"], seed=seed_, step=r["step"], metric=metric, diff_low=low, diff_high=high,
                             resampled=len(ok) / n_boot))
    return pd.DataFrame(rows, columns=["arm", "seed", "step", "metric", "diff_low", "diff_high", "resampled"])


def _predictions_path(root: Path, row: pd.Series) -> Path:
    key = BASE_KEY if row["arm"] == BASE_KEY else f"{row['arm']}-s{int(row['seed'])}"
    return root / key / row["stage"] / "predictions.parquet"
