"""The study's report from its committed outputs: the run list, paired comparisons within each seed, their
summary across seeds, tables and figure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import pandas as pd

from coinlib.core.fileio import atomic_write_text
from coinlib.evaluate.compare import across_seeds, long_format, paired_bootstrap
from coinlib.evaluate.metrics import summarize
from coinlib.results.report import group_table, paired_markdown_table, paired_table, task_table
from coinlib.study import curves
from coinlib.study.spec import BASE_KEY, StudySpec, arm_params, reference_of
from coinlib.study.store import PROGRESS, _read_meta, runs_dir, training_progress


def committed_runs(spec: StudySpec) -> pd.DataFrame:
    """Every run x format of the spec (and any other seed found committed): status, wall times, headline metrics."""
    root = runs_dir(spec)
    keys = [(BASE_KEY, BASE_KEY, None)] if spec.base_model else []
    found = [run for p in root.iterdir() if (run := arm_and_seed(spec, p.name))] if root.is_dir() else []
    for arm in spec.arms:
        extra = {s for a, s in found if a == arm}
        keys += [(f"{arm}-s{s}", arm, s) for s in sorted(set(spec.seeds) | extra)]
    rows, progress = [], training_progress(spec)
    for key, arm, seed in keys:
        train_meta = _read_meta(root / key / "train")
        log = root / key / "train" / "train_log.csv"
        steps = int(pd.read_csv(log)["step"].max()) if log.is_file() else None
        waiting = "not run"
        if not train_meta and key in progress:  # a long training committed part-way (commit_progress)
            steps, spent = progress[key]
            waiting = f"training: step {steps} of {arm_params(spec, arm, seed).train.max_steps}"
            train_meta = {"wall_s": spent}
        for fmt in spec.formats:
            folder = root / key / f"eval-{fmt}"
            meta = _read_meta(folder)
            row = dict(run=key, arm=arm, seed=seed, format=fmt, status="done" if meta else waiting,
                       steps=steps, train_s=train_meta.get("wall_s"), eval_s=meta.get("wall_s"))
            if meta:
                row.update(_headline(pd.read_csv(folder / "summary.csv")))
            rows.append(row)
    return pd.DataFrame(rows)



def arm_and_seed(spec: StudySpec, key: str) -> Optional[tuple[str, int]]:
    """The arm and seed of a run folder named ``<arm>-s<seed>`` (None for the base model or any other name)."""
    for arm in spec.arms:
        if m := re.fullmatch(rf"{re.escape(arm)}-s(\d+)", key):
            return arm, int(m.group(1))
    return None


LOG_COLUMNS = ["step", "loss_ent", "loss_ctr"]


def training_logs(spec: StudySpec) -> pd.DataFrame:
    """The logged generation and contrastive losses of every committed training: a finished run's
    ``train/train_log.csv``, else the ``trainer_state.json`` of its committed progress (a run part-way).
    Columns run, arm, seed, finished, step, loss_ent, loss_ctr (NaN where the run logs none)."""
    root, frames = runs_dir(spec), []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        run = arm_and_seed(spec, folder.name)
        if run is None:
            continue
        log, state = folder / "train" / "train_log.csv", folder / PROGRESS / "trainer_state.json"
        if log.is_file():
            rows, finished = pd.read_csv(log), True
        elif state.is_file():
            history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
            rows, finished = pd.DataFrame([h for h in history if "loss_ent" in h]), False
        else:
            continue
        if rows.empty:
            continue
        rows = rows.reindex(columns=LOG_COLUMNS)
        frames.append(rows.assign(run=folder.name, arm=run[0], seed=run[1], finished=finished))
    columns = ["run", "arm", "seed", "finished"] + LOG_COLUMNS
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _headline(summary: pd.DataFrame) -> dict[str, float]:
    """Averages over tasks and groups of a summary (flip rates over the perturbed groups); clean calibrated accuracy."""
    clean = summary[summary["group"] == "clean"]
    return dict(acc=summary["mean_acc"].mean(), cal_acc=summary["cal_acc"].mean(), auc=summary["auc"].mean(),
                std_cal_acc=summary["std_cal_acc"].mean(), flip_rate_cal=summary["flip_rate_cal"].mean(),
                clean_cal_acc=clean["cal_acc"].mean())


def load_committed_predictions(spec: StudySpec, key: str, fmt: str, label: str) -> Optional[pd.DataFrame]:
    """A committed evaluation's predictions with the model relabelled ``label`` (None when not committed)."""
    return load_committed_predictions_at(spec, key, f"eval-{fmt}", label)


def per_seed_comparisons(spec: StudySpec, runs: pd.DataFrame) -> pd.DataFrame:
    """Paired bootstrap (:func:`coinlib.evaluate.compare.paired_bootstrap`) of each arm against the reference within
    each seed and format, in :func:`coinlib.evaluate.compare.long_format` rows with ``format, arm, reference, seed``."""
    parts = []
    done = runs[runs["status"] == "done"]
    for fmt in spec.formats:
        for arm in (a for a in spec.arms if a != spec.reference):
            ref = reference_of(spec, arm)
            seeds = sorted(set(done.loc[(done.arm == arm) & (done.format == fmt), "seed"])
                           & set(done.loc[(done.arm == ref) & (done.format == fmt), "seed"]))
            for seed in seeds:
                both = [load_committed_predictions(spec, f"{a}-s{int(seed)}", fmt, a) for a in (arm, ref)]
                paired = paired_bootstrap(pd.concat(both, ignore_index=True), arm, ref, spec.n_boot, seed=0)
                parts.append(long_format(paired).assign(format=fmt, arm=arm, reference=ref, seed=int(seed)))
    columns = ["format", "arm", "reference", "seed", "group", "metric", "a", "b", "diff", "diff_low", "diff_high", "se"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def dose_arms(spec: StudySpec) -> dict[str, float]:
    """Arms that differ from the recipe only in the contrastive weight: arm -> lambda (0 for an arm without the
    contrastive term, e.g. CIT). Arms with other overrides (data, model, other training keys) are left out."""
    dose = {}
    for arm, a in spec.arms.items():
        if a.model or a.data or not set(a.train) <= {"lambda", "contrastive"}:
            continue
        P = arm_params(spec, arm, spec.seeds[0])
        dose[arm] = float(P.train.lambda_) if P.train.contrastive else 0.0
    return dose


def dose_response(spec: StudySpec, runs: pd.DataFrame) -> pd.DataFrame:
    """The committed runs of :func:`dose_arms` with their ``lambda`` (rows of :func:`committed_runs` that are done)."""
    dose = dose_arms(spec)
    done = runs[(runs["status"] == "done") & runs["arm"].isin(list(dose))]
    return done.assign(**{"lambda": done["arm"].map(dose)}).sort_values(["format", "lambda", "seed"])


def paper_sections(spec: StudySpec, fmt: str, stage: str = "") -> dict[str, pd.DataFrame]:
    """Table 3's layout for one seed (the first) of the reference arm (CIT), the ``coin`` arm and the base model in
    format ``fmt`` (stage ``eval-<fmt>``, or ``stage``): accuracy ± std per group beside the paper's, per task
    under the clean instructions, and the paired differences; empty when fewer than two of them are committed."""
    seed = spec.seeds[0]
    keys = {"base": BASE_KEY, "cit": f"{spec.reference}-s{seed}", "coin": f"coin-s{seed}" if "coin" in spec.arms else ""}
    frames = [load_committed_predictions_at(spec, key, stage or f"eval-{fmt}", role) for role, key in keys.items() if key]
    frames = [f for f in frames if f is not None]
    if len(frames) < 2:
        return {}
    predictions = pd.concat(frames, ignore_index=True)
    roles = {r: r for r in dict.fromkeys(predictions["model"])}
    summary = summarize(predictions, n_boot=spec.n_boot, seed=0)
    model = arm_params(spec, spec.reference, seed).model.name
    return {"groups": group_table(summary, roles, model), "tasks": task_table(summary, roles),
            "paired": paired_markdown_table(paired_table(predictions, roles, spec.n_boot, seed=0))}


def load_committed_predictions_at(spec: StudySpec, key: str, stage: str, label: str) -> Optional[pd.DataFrame]:
    """A committed stage's predictions with the model relabelled ``label`` (None when not committed)."""
    path = runs_dir(spec) / key / stage / "predictions.parquet"
    return pd.read_parquet(path).assign(model=label) if path.is_file() else None


def write_report(spec: StudySpec) -> dict[str, pd.DataFrame]:
    """Tables (CSV + Markdown) and the figure of the study from its committed outputs, into ``spec.committed_dir``."""
    from coinlib.results import plots, tables  # matplotlib: only when the report is drawn

    runs = committed_runs(spec)
    per_seed = per_seed_comparisons(spec, runs)
    across = across_seeds(per_seed, alpha=spec.alpha, power=spec.power) if len(per_seed) else pd.DataFrame()
    out = spec.committed_dir
    labels = {a: s.label for a, s in spec.arms.items()}
    plots.save_table(runs, out, "study_runs")
    plots.save_table(per_seed, out, "study_per_seed")
    plots.save_table(across, out, "study_across_seeds")
    markdown = tables.study_markdown(runs, per_seed, across, labels, spec.alpha, spec.power)
    atomic_write_text(out / "study.md", markdown)
    if len(per_seed):
        for (fmt, ref), rows in per_seed.groupby(["format", "reference"], sort=True):
            name = f"seed_differences_{fmt}" + ("" if ref == spec.reference else f"_vs_{ref}")
            summary = across[(across.format == fmt) & across["arm"].isin(set(rows["arm"]))]
            fig = plots.plot_seed_differences(rows, summary, labels)
            plots.save_figure(fig, rows, out, name)
            plots.plt.close(fig)
    for fmt in spec.formats:
        sections = paper_sections(spec, fmt)
        if sections:
            text = "\n".join(f"### {name}\n\n{tables.to_markdown(t)}" for name, t in sections.items())
            atomic_write_text(out / f"table3_{fmt}.md", f"# Table 3 layout, {fmt} format, seed {spec.seeds[0]}\n\n"
                              "Accuracy ± std over instructions (%), the paper's (Alpaca-7B) beside ours; "
                              "paired differences with 95% bootstrap intervals.\n\n" + text)
    dose = dose_response(spec, runs)
    for fmt in sorted(set(dose["format"])):
        if dose.loc[dose.format == fmt, "lambda"].nunique() >= 3:  # a curve needs three weights at least
            fig = plots.plot_dose_response(dose[dose.format == fmt])
            plots.save_figure(fig, dose[dose.format == fmt], out, f"lambda_dose_{fmt}")
            plots.plt.close(fig)
    for fmt in spec.formats:
        write_curves(spec, fmt, labels)
    logs = training_logs(spec)
    if len(logs):
        fig = plots.plot_training_losses(logs, labels)
        plots.save_figure(fig, logs, out, "training_losses")
        plots.plt.close(fig)
    else:
        _remove_outputs(out, "training_losses")
    return {"runs": runs, "per_seed": per_seed, "across": across, "dose": dose, "logs": logs}


def write_curves(spec: StudySpec, fmt: str, labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The metric-vs-step figure (when a run has part-way evaluations) and the comparison at equal skill
    (:mod:`coinlib.study.curves`) of format ``fmt``: ``curves_<fmt>``, ``skill_matched_<fmt>`` (figure with
    its CSV, a Markdown summary) in ``spec.committed_dir``."""
    from coinlib.results import plots, tables

    points = curves.curve_points(spec, fmt)
    trained = points[points["arm"] != BASE_KEY]
    out = spec.committed_dir
    if trained.empty:
        for stem in (f"curves_{fmt}", f"skill_matched_{fmt}"):
            _remove_outputs(out, stem)
        return {}
    if trained.groupby(["arm", "seed"]).size().max() >= 2:
        fig = plots.plot_metric_curves(points, labels)
        plots.save_figure(fig, points, out, f"curves_{fmt}")
        plots.plt.close(fig)
    else:
        _remove_outputs(out, f"curves_{fmt}")
    matched = curves.skill_matched(points, spec.reference)
    summary = curves.matched_summary(matched)
    if summary.empty:
        _remove_outputs(out, f"skill_matched_{fmt}")  # an earlier report's, from stages that no longer qualify
        return {"points": points, "matched": matched}
    intervals = curves.matched_intervals(spec, fmt, points, matched, n_boot=spec.n_boot)
    matched = matched.merge(intervals, on=["arm", "seed", "step", "metric"], how="left")
    fig = plots.plot_skill_matched(points, spec.reference, labels)
    plots.save_figure(fig, matched, out, f"skill_matched_{fmt}")
    plots.plt.close(fig)
    name = labels.get(spec.reference, spec.reference)
    shown = summary.assign(arm=summary["arm"].map(lambda a: labels.get(a, a)),
                           metric=summary["metric"].map(lambda m: tables.STUDY_METRICS.get(m, m)),
                           mean_diff=(100 * summary["mean_diff"]).round(1))
    per_point = _matched_points(matched, labels, name)
    atomic_write_text(out / f"skill_matched_{fmt}.md",
                      f"# At equal skill, {fmt} format: arm minus {name}\n\n"
                      f"Each trained point of an arm beside the {spec.reference} curve of its seed read at the same "
                      "AUC (linear between its evaluations, base model at step 0; points outside its AUC range, and "
                      "seeds whose reference has no part-way evaluations, are left out). mean_diff in points; above: "
                      "points above the reference.\n\n" + tables.to_markdown(shown)
                      + "\n\n## Point by point\n\nThe interval redraws the instances "
                      f"({int(points['n_instances'].min())} per task; {spec.n_boot} paired resamples: the point and "
                      f"the whole {name} curve on the same instances, the curve read at the point's resampled AUC; "
                      "calibration thresholds fixed); it covers instance sampling, not seeds.\n\n" + tables.to_markdown(per_point))
    return {"points": points, "matched": matched, "summary": summary}


def _matched_points(matched: pd.DataFrame, labels: dict[str, str], reference: str) -> pd.DataFrame:
    """One row per matched point: its AUC, and per metric its value, the reference's at that AUC and the difference
    with its interval (points)."""
    from coinlib.results import tables

    rows = []
    for (arm, seed, step), mine in curves.matched_only(matched).groupby(["arm", "seed", "step"], sort=False):
        row = {"arm": labels.get(arm, arm), "seed": seed, "step": step, "AUC": round(100 * mine["auc"].iloc[0], 1)}
        for _, r in mine.iterrows():
            metric = tables.STUDY_METRICS.get(r["metric"], r["metric"])
            row[metric] = round(100 * r["value"], 1)
            row[f"{metric}: {reference} at that AUC"] = round(100 * r["at_reference"], 1)
            row[f"{metric}: difference [95%]"] = (f"{100 * r['diff']:+.1f} [{100 * r['diff_low']:+.1f}, "
                                                  f"{100 * r['diff_high']:+.1f}]")
        rows.append(row)
    return pd.DataFrame(rows)


def _remove_outputs(out: Path, stem: str) -> None:
    """Delete a figure's files (every suffix) that this report no longer makes."""
    for path in out.glob(f"{stem}.*"):
        path.unlink()
