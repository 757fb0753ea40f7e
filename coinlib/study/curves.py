"""Metric-vs-step curves of a study's training runs, and comparisons at equal skill.

A run's curve is the base model (step 0), its part-way evaluations (``step<N>-<format>``, :mod:`checkpoints`) and
its final evaluation (``eval-<format>``), all on the same sample. A weaker model flips more answers near a decision
threshold, so a flip rate says little about instruction sensitivity until the models compared are equally skilled:
:func:`skill_matched` reads each reference curve (CIT, seed by seed) at the AUC of every other run's point, so an arm
is compared with the reference *when the reference was as good as it*.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from coinlib.evaluate.metrics import summarize
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


def matched_summary(matched: pd.DataFrame) -> pd.DataFrame:
    """Per arm and metric over the matched points: their number, seeds, mean difference from the reference at equal
    AUC, and how many points lie above it."""
    ok = matched[matched["matched"].astype(bool)]  # an empty column is of object dtype: not a mask
    return (ok.groupby(["arm", "metric"], sort=True)
              .agg(points=("diff", "size"), seeds=("seed", "nunique"), mean_diff=("diff", "mean"),
                   above=("diff", lambda d: int((d > 0).sum())))
              .reset_index())
