"""Metric-vs-step curves and the comparison at equal skill (coinlib/study/curves.py) from committed predictions."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from coinlib.core.params import PARAMS_DIR
from coinlib.study import curves, report
from coinlib.study import spec as study_spec
from predictions_helper import synthetic_predictions

SPEC = PARAMS_DIR / "studies" / "sentiment.yaml"


def test_point_metrics_read_skill_and_consistency_from_the_predictions():
    weak, strong = curves.point_metrics(synthetic_predictions(0.2, 1.0, 0)), curves.point_metrics(synthetic_predictions(2.0, 1.0, 0))
    assert weak["n_instances"] == strong["n_instances"] == 40
    assert 0.5 <= weak["auc"] < strong["auc"] <= 1.0 and weak["cal_acc"] < strong["cal_acc"]
    # the same instruction noise: a larger gap between the labels makes margins' order more stable
    assert weak["margin_rank"] < strong["margin_rank"]
    steady = curves.point_metrics(synthetic_predictions(0.2, 0.05, 0))
    assert steady["margin_rank"] > 0.95 and steady["flip_rate_cal"] < weak["flip_rate_cal"]


def _points(rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(["arm", "seed", "step", "auc", "flip_rate_cal", "margin_rank"], r)) for r in rows])


def test_skill_matched_reads_the_reference_curve_of_the_same_seed_at_equal_auc():
    points = _points([
        ("base", None, 0, 0.60, 0.20, 0.80),
        ("cit", 0, 40, 0.80, 0.12, 0.90), ("cit", 0, 80, 0.90, 0.10, 0.94),
        ("cit", 1, 80, 0.70, 0.18, 0.85),                      # another seed: another curve
        ("coin", 0, 80, 0.70, 0.19, 0.82),                     # halfway between base and CIT's step 40
        ("coin", 0, 40, 0.95, 0.05, 0.99),                     # beyond CIT's best AUC: not matched
        ("coin", 1, 80, 0.65, 0.20, 0.80),
    ])
    matched = curves.skill_matched(points, "cit").set_index(["arm", "seed", "step", "metric"])
    flip = matched.loc[("coin", 0, 80, "flip_rate_cal")]
    assert flip["matched"] and flip["at_reference"] == pytest.approx(0.16) and flip["diff"] == pytest.approx(0.03)
    assert matched.loc[("coin", 0, 80, "margin_rank"), "diff"] == pytest.approx(0.82 - 0.85)
    far = matched.loc[("coin", 0, 40, "flip_rate_cal")]
    assert not far["matched"] and math.isnan(far["diff"])  # no extrapolation
    # seed 1's reference is base -> (0.70, 0.18) only: a straight line, not a curve, unless asked for
    assert not matched.loc[("coin", 1, 80, "flip_rate_cal"), "matched"]
    lines = curves.skill_matched(points, "cit", min_curve_points=2).set_index(["arm", "seed", "step", "metric"])
    assert lines.loc[("coin", 1, 80, "flip_rate_cal"), "at_reference"] == pytest.approx(0.19)  # at AUC 0.65
    summary = curves.matched_summary(curves.skill_matched(points, "cit", min_curve_points=2)).set_index(["arm", "metric"])
    flip = summary.loc[("coin", "flip_rate_cal")]
    assert (flip["points"], flip["seeds"], flip["above"]) == (2, 2, 2)
    assert flip["mean_diff"] == pytest.approx((0.03 + 0.01) / 2)
    nothing = curves.matched_summary(curves.skill_matched(points[points["arm"] != "coin"], "cit"))  # no rows
    assert nothing.empty and list(nothing.columns) == ["arm", "metric", "points", "seeds", "mean_diff", "above"]


def test_curves_and_skill_match_are_drawn_from_committed_stages(tmp_path):
    spec = study_spec.load_spec(SPEC).model_copy(update={"committed_root": str(tmp_path)})
    runs = spec.committed_dir / "runs"
    stages = {("base", "eval-train"): (0.1, 1), ("cit-s0", "step20-train"): (0.6, 2), ("cit-s0", "step40-train"): (1.0, 3),
              ("cit-s0", "eval-train"): (2.0, 4), ("coin-s0", "eval-train"): (0.8, 5),
              ("cit-cont-s0", "eval-train"): (3.0, 6)}  # continues CIT's adapter: no curve of its own
    for (key, stage), (skill, seed) in stages.items():
        (runs / key / stage).mkdir(parents=True)
        synthetic_predictions(skill, 1.0, seed).to_parquet(runs / key / stage / "predictions.parquet")
    points = curves.curve_points(spec, "train")
    assert [tuple(r) for r in points[["arm", "step", "stage"]].itertuples(index=False)] == [
        ("base", 0, "eval-train"), ("cit", 20, "step20-train"), ("cit", 40, "step40-train"), ("cit", 80, "eval-train"),
        ("coin", 80, "eval-train")]
    assert curves.curve_points(spec, "paper").empty
    labels = {a: s.label for a, s in spec.arms.items()}
    out = report.write_curves(spec, "train", labels)
    assert list(out["summary"]["arm"]) == ["coin", "coin"] and out["summary"]["points"].tolist() == [1, 1]
    for name in ("curves_train.png", "curves_train.csv", "skill_matched_train.png", "skill_matched_train.csv",
                 "skill_matched_train.md"):
        assert (spec.committed_dir / name).is_file(), name
    drawn = pd.read_csv(spec.committed_dir / "curves_train.csv")
    assert len(drawn) == 5 and set(drawn["arm"]) == {"base", "cit", "coin"}
    # without CIT's part-way evaluations nothing is matched: the earlier comparison's files go, the figures stay
    for stage in ("step20-train", "step40-train"):
        (runs / "cit-s0" / stage / "predictions.parquet").unlink()
    stale = spec.committed_dir / "skill_matched_paper.md"
    stale.write_text("an earlier report")
    assert "summary" not in report.write_curves(spec, "train", labels) and report.write_curves(spec, "paper", labels) == {}
    assert not list(spec.committed_dir.glob("skill_matched_*")) and not (spec.committed_dir / "curves_train.png").exists()


def test_matched_intervals_resample_the_point_and_the_curve_on_the_same_instances(tmp_path):
    spec = study_spec.load_spec(SPEC).model_copy(update={"committed_root": str(tmp_path)})
    runs = spec.committed_dir / "runs"
    stages = {("base", "eval-train"): (0.1, 1), ("cit-s0", "step20-train"): (0.6, 2),
              ("cit-s0", "step40-train"): (1.0, 3), ("cit-s0", "eval-train"): (2.0, 4),
              ("coin-s0", "eval-train"): (1.0, 3),      # CIT's step-40 predictions: on its curve in every resample
              ("coin-l10-s0", "eval-train"): (0.8, 5)}
    for (key, stage), (skill, seed) in stages.items():
        (runs / key / stage).mkdir(parents=True)
        synthetic_predictions(skill, 1.0, seed).to_parquet(runs / key / stage / "predictions.parquet")
    points = curves.curve_points(spec, "train")
    matched = curves.skill_matched(points, "cit")
    got = curves.matched_intervals(spec, "train", points, matched, n_boot=200).set_index(["arm", "metric"])
    assert sorted(got.index) == [(a, m) for a in ("coin", "coin-l10") for m in ("flip_rate_cal", "margin_rank")]
    for metric in ("flip_rate_cal", "margin_rank"):
        assert got.loc[("coin", metric), ["diff_low", "diff_high"]].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)
        assert got.loc[("coin", metric), "resampled"] == 1.0
        diff = matched.set_index(["arm", "metric"]).loc[("coin-l10", metric), "diff"]
        low, high = got.loc[("coin-l10", metric), ["diff_low", "diff_high"]]
        assert low < diff < high and 0 < high - low < 0.5  # 40 instances: wide, not degenerate
    # the resamples centre on the point's own metrics; evaluations of other instances are refused
    one = synthetic_predictions(1.0, 1.0, 3)
    boot, point = curves.bootstrap_points({"a": one}, 400)["a"], curves.point_metrics(one)
    assert boot["auc"].mean() == pytest.approx(point["auc"], abs=0.01)
    assert boot["flip_rate_cal"].mean() == pytest.approx(point["flip_rate_cal"], abs=0.01)
    assert boot["margin_rank"].mean() == pytest.approx(point["margin_rank"], abs=0.01)
    with pytest.raises(ValueError, match="same groups, instructions and instances"):
        curves.bootstrap_points({"a": one, "b": synthetic_predictions(1.0, 1.0, 3, n=30)})
