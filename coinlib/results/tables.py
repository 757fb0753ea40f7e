"""The paper's tables from tidy evaluation summaries, ours beside the paper's.

Every function takes summary-shaped rows (one per model x task x group with ``mean_acc`` and ``std_acc``, see the
evaluation contract) so the paper's own numbers (:mod:`coinlib.core.paper_numbers`) and ours go through the same code.

Aggregation rules, as the paper's tables do it (checked against its numbers in tests/test_report.py):
- averages over tasks (the "Average" column of Tables 3 and 4): accuracy = mean over tasks, ``std_acc`` = the std
  over instructions pooled over tasks (:func:`coinlib.evaluate.metrics.pooled_std`); Figure 3 and the paired
  comparison show the same quantity.
- task categories (Table 1, categories of Table 5; :mod:`coinlib.core.tasks`): accuracy = mean of the
  per-task-and-group mean accuracies, ``mean_task_std`` = mean of the per-task-and-group stds over instructions
  (:func:`coinlib.evaluate.metrics.mean_task_std`; only that reproduces Table 1 from Table 3, with MNLI-m and
  MNLI-mm counted in NLI besides MNLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from coinlib.core.groups import ALL_GROUPS
from coinlib.core.paper_numbers import PAPER_MODEL, paper_tables
from coinlib.core.tasks import CATEGORIES, category_of, category_tasks
from coinlib.evaluate.compare import seeds_needed
from coinlib.evaluate.metrics import mean_task_std, pooled_std
from coinlib.results.inputs import lambda_runs, role_runs, summaries_for_runs

if TYPE_CHECKING:
    from coinlib.core.params import Params

ROLE_LABELS = {"base": "Base", "cit": "CIT", "coin": "COIN"}


def _pool(frame: pd.DataFrame, by: list[str], count: str) -> pd.DataFrame:
    rows = [
        {**dict(zip(by, key if isinstance(key, tuple) else (key,))),
         "mean_acc": float(g["mean_acc"].mean()), "std_acc": pooled_std(g["mean_acc"], g["std_acc"]),
         count: len(g)}
        for key, g in frame.groupby(by, sort=False, dropna=False)
    ]
    return pd.DataFrame(rows, columns=[*by, "mean_acc", "std_acc", count])


def average_over_tasks(summary: pd.DataFrame, by: Sequence[str] = ("model", "group")) -> pd.DataFrame:
    """The tables' "Average" column: per ``by`` key, mean accuracy over tasks and pooled std (see module doc)."""
    _require(summary, [*by, "task", "mean_acc", "std_acc"])
    rows = summary[summary["task"] != "average"]
    return _pool(rows, list(by), "n_tasks")


def average_over_groups(averages: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Pool per-group averages (output of :func:`average_over_tasks`) into one row per ``by`` key, group "average"."""
    _require(averages, [*by, "group", "mean_acc", "std_acc"])
    out = _pool(averages, list(by), "n_groups")
    return out.assign(group=ALL_GROUPS)


def task_categories(summary: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Table 1: per ``by`` key and task category, mean accuracy and ``mean_task_std`` over its task x group rows.

    Tasks outside the four categories are ignored. ``tasks`` and ``n_groups`` say what each row covers.
    """
    _require(summary, [*by, "task", "group", "mean_acc", "std_acc"])
    rows = summary.assign(category=summary["task"].map(category_of)).dropna(subset=["category"])
    out = (
        rows.groupby([*by, "category"], sort=False)
        .agg(mean_acc=("mean_acc", "mean"), mean_task_std=("std_acc", mean_task_std),
             tasks=("task", lambda t: " ".join(sorted(set(t)))), n_groups=("group", "nunique"))
        .reset_index()
    )
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return out.sort_values([*by, "category"], key=lambda s: s.map(order) if s.name == "category" else s,
                           kind="stable").reset_index(drop=True)


def matched_to(paper: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Paper rows restricted to the (task, group) pairs that ours covers, for a like-for-like comparison."""
    covered = ours[["task", "group"]].drop_duplicates()
    return paper.merge(covered, on=["task", "group"], how="inner")


def category_comparison(ours: pd.DataFrame, our_model: str, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 for the paper and for us, long format, with COIN minus CIT rows.

    ``ours``: summary rows with a ``role`` column ("cit", "coin"). ``paper``: Table 3 rows (default: the stored
    ones); they are matched to the tasks and groups ours covers, so with full coverage they give the paper's Table 1.
    Columns: source (paper/ours), model (name and scale), role, category, mean_acc, mean_task_std, tasks, n_groups.
    """
    if not ours["task"].map(category_of).notna().any():
        raise ValueError(f"none of the evaluated tasks ({', '.join(sorted(set(ours['task'])))}) is in a Table 5 "
                         f"category ({', '.join(t for c in CATEGORIES for t in category_tasks(c))}); evaluate one")
    paper = paper_glue(3) if paper is None else paper
    paper = matched_to(paper[paper["model"].isin(["cit", "coin"])].assign(role=paper["model"]), ours)
    parts = []
    for source, model, rows in (("paper", PAPER_MODEL, paper), ("ours", our_model, ours)):
        cats = task_categories(rows, by=["role"])
        parts.append(_with_delta(cats, ["category"]).assign(source=source, model=model))
    cols = ["source", "model", "role", "category", "mean_acc", "mean_task_std", "tasks", "n_groups"]
    return pd.concat(parts, ignore_index=True)[cols]


def lambda_comparison(ours: pd.DataFrame, our_model: str, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 4 / Figure 5 for the paper and for us: per lambda and group, average over tasks; plus group "average".

    ``ours``: summary rows with a numeric ``lambda`` column. ``paper``: Table 4 rows (default: stored), matched to
    the tasks and groups ours covers (all of them: the paper's Average column). Columns: source, model, lambda,
    group, mean_acc, std_acc, n_tasks.
    """
    paper = paper_glue(4) if paper is None else paper
    parts = []
    for source, model, rows in (("paper", PAPER_MODEL, matched_to(paper, ours)), ("ours", our_model, ours)):
        per_group = average_over_tasks(rows, by=["lambda", "group"])
        overall = average_over_groups(per_group, by=["lambda"]).assign(n_tasks=per_group["n_tasks"].max())
        both = pd.concat([per_group, overall.drop(columns="n_groups")], ignore_index=True)
        parts.append(both.assign(source=source, model=model))
    out = pd.concat(parts, ignore_index=True)
    return out[["source", "model", "lambda", "group", "mean_acc", "std_acc", "n_tasks"]]


def ours_by_role(P: "Params") -> pd.DataFrame:
    """Our summary rows of the CIT and COIN runs (``analysis.cit_run`` / ``coin_run``) with a ``role`` column."""
    rows = summaries_for_runs(P, role_runs(P), "the model of role")
    return rows.rename(columns={"key": "role"})


def ours_by_lambda(P: "Params") -> pd.DataFrame:
    """Our summary rows of the lambda sweep (``analysis.lambda_runs``) with a numeric ``lambda`` column."""
    rows = summaries_for_runs(P, lambda_runs(P), "the COIN run of lambda")
    return rows.rename(columns={"key": "lambda"}).astype({"lambda": float})


def best_lambda(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per source, the lambda with the highest accuracy averaged over groups (the paper: 1000)."""
    overall = comparison[comparison["group"] == ALL_GROUPS]
    best = overall.loc[overall.groupby(["source", "model"], sort=False)["mean_acc"].idxmax()]
    return best[["source", "model", "lambda", "mean_acc", "std_acc"]].reset_index(drop=True)


def _with_delta(cats: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """Append rows ``role = "coin - cit"`` with the differences of accuracy and of the category std."""
    values = ["mean_acc", "mean_task_std"]
    wide = cats.pivot_table(index=on, columns="role", values=values, sort=False)
    if not {"cit", "coin"} <= set(cats["role"]):
        return cats
    delta = pd.DataFrame({v: wide[(v, "coin")] - wide[(v, "cit")] for v in values}).reset_index().assign(
        role="coin - cit")
    meta = cats[cats["role"] == "coin"][[*on, "tasks", "n_groups"]]
    return pd.concat([cats, delta.merge(meta, on=on)], ignore_index=True)


def paper_glue(table: int) -> pd.DataFrame:
    """The paper's per-task rows of Table 3 or 4 (without its "Average" column)."""
    rows = paper_tables(table)
    return rows[rows["task"] != "average"].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- formatting
def pct(mean: float, std: float | None = None, signed: bool = False) -> str:
    """``"69.2 ± 11.1"`` from fractions (``signed`` prefixes + to positive means, for differences)."""
    if mean is None or pd.isna(mean):
        return "–"
    head = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    if std is None or pd.isna(std):
        return head
    return f"{head} / {100 * std:+.1f}" if signed else f"{head} ± {100 * std:.1f}"


def category_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Table 1 layout from :func:`category_comparison`: one row per category, "acc ± mean task std" cells per source
    and role."""
    cells = comparison.assign(
        column=comparison["source"] + " " + comparison["model"] + ": " + comparison["role"].map(
            lambda r: ROLE_LABELS.get(r, "Δ (COIN − CIT)")),
        cell=[pct(m, s, signed=(r == "coin - cit")) for m, s, r in
              zip(comparison["mean_acc"], comparison["mean_task_std"], comparison["role"])],
        category=comparison["category"].map(CATEGORIES),
    )
    wide = cells.pivot(index="category", columns="column", values="cell")
    order = [CATEGORIES[c] for c in CATEGORIES if CATEGORIES[c] in wide.index]
    return wide.loc[order, list(dict.fromkeys(cells["column"]))].rename_axis(columns=None).reset_index()


def lambda_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Table 4 layout from :func:`lambda_comparison`: rows lambda x group, one "acc ± std" column per source."""
    cells = comparison.assign(
        column=comparison["source"] + " " + comparison["model"],
        cell=[pct(m, s) for m, s in zip(comparison["mean_acc"], comparison["std_acc"])],
    )
    wide = cells.pivot_table(index=["lambda", "group"], columns="column", values="cell", aggfunc="first", sort=False)
    wide = wide.reset_index().rename_axis(columns=None)
    wide["lambda"] = wide["lambda"].map(lambda x: f"{x:g}")
    return wide[["lambda", "group", *dict.fromkeys(cells["column"])]].fillna("–")


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def esc(v: object) -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).replace("|", "\\|")

    header = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; has {list(frame.columns)}")


# ---------------------------------------------------------------------------------------------- multi-seed study
STUDY_METRICS = {
    "cal_acc": "calibrated accuracy", "auc": "ROC AUC of the margin",
    "std_cal_acc": "std over instructions (cal. acc.)",
    "flip_rate_cal": "flip rate (calibrated)", "acc": "accuracy", "std": "std over instructions (accuracy)",
    "flip_rate": "flip rate", "margin_rank": "margin rank correlation with clean",
}


def _pts(v: float, signed: bool = False) -> str:
    return "–" if v is None or pd.isna(v) else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")


def _p(v: float) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.2f}" if v >= 0.01 else f"{v:.0e}"


def study_runs_table(runs: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Display layout of the study's run list (:func:`coinlib.study.report.committed_runs`): every run and format,
    done or not, with wall times in minutes and headline metrics in %."""
    def minutes(v):
        return "–" if v is None or pd.isna(v) else f"{v / 60:.1f}"

    def cell(r, c):
        return _pts(r[c]) if c in r.index else "–"

    return pd.DataFrame({
        "run": runs["run"], "arm": runs["arm"].map(lambda a: labels.get(a, a)),
        "seed": runs["seed"].map(lambda s: "–" if pd.isna(s) else str(int(s))), "format": runs["format"],
        "status": runs["status"], "steps": runs["steps"].map(lambda s: "–" if pd.isna(s) else str(int(s))),
        "train (min)": runs["train_s"].map(minutes), "eval (min)": runs["eval_s"].map(minutes),
        **{name: [cell(r, c) for _, r in runs.iterrows()] for c, name in (
            ("acc", "acc"), ("cal_acc", "cal. acc"), ("clean_cal_acc", "clean cal. acc"), ("auc", "AUC"),
            ("std_cal_acc", "std cal. acc"), ("flip_rate_cal", "flip (cal.)"))},
    })


def study_across_table(across: pd.DataFrame, per_seed: pd.DataFrame, group: str = ALL_GROUPS,
                       target: float = 0.02, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """One row per metric of one format and arm (rows of :func:`coinlib.evaluate.compare.across_seeds`) at ``group``:
    reference and arm means over seeds, the mean difference with its t-interval, each seed's difference, the paired
    t-test and sign-flip p-values, the minimum detectable difference (MDD), in points (AUC x 100), and the seeds
    needed for an MDD of ``target`` (:func:`coinlib.evaluate.compare.seeds_needed`; "> 100" when no number does)."""
    def needed(r) -> str:
        if pd.isna(r["sd_diff"]) or pd.isna(r["se_inst"]):
            return "–"
        n = seeds_needed(r["sd_diff"], r["se_inst"], target, alpha, power)
        return "> 100" if n is None else str(n)

    rows = across[across["group"] == group].set_index("metric")
    seeds = per_seed[per_seed["group"] == group]
    out = []
    for metric, name in STUDY_METRICS.items():
        if metric not in rows.index:
            continue
        r = rows.loc[metric]
        d = seeds[seeds["metric"] == metric].sort_values("seed")
        out.append({
            "metric": name, "reference": _pts(r["mean_b"]), "arm": _pts(r["mean_a"]),
            "Δ [95% t-interval]":
                f"{_pts(r['mean_diff'], True)} [{_pts(r['ci_low'], True)}, {_pts(r['ci_high'], True)}]",
            "Δ per seed": " ".join(_pts(v, True) for v in d["diff"]), "p (t)": _p(r["p_t"]),
            "p (sign-flip)": _p(r["p_perm"]), "MDD": _pts(r["mdd"]),
            f"seeds for MDD {100 * target:g}": needed(r),
        })
    return pd.DataFrame(out)


def study_group_table(across: pd.DataFrame, metrics: Sequence[str] = ("cal_acc", "auc", "std_cal_acc",
                                                                       "flip_rate_cal")) -> pd.DataFrame:
    """Per group: "Δ [t-interval] (MDD)" of each metric across seeds, in points."""
    groups = list(dict.fromkeys(across["group"]))
    cells = {}
    for metric in metrics:
        sub = across[across["metric"] == metric].set_index("group")
        cells[STUDY_METRICS[metric]] = [
            f"{_pts(sub.loc[g, 'mean_diff'], True)} [{_pts(sub.loc[g, 'ci_low'], True)}, "
            f"{_pts(sub.loc[g, 'ci_high'], True)}] ({_pts(sub.loc[g, 'mdd'])})" if g in sub.index else "–"
            for g in groups]
    return pd.DataFrame({"group": groups, **cells})


def study_seed_table(per_seed: pd.DataFrame, group: str = ALL_GROUPS,
                     metrics: Sequence[str] = ("cal_acc", "auc", "std_cal_acc", "flip_rate_cal")) -> pd.DataFrame:
    """Within each seed: "Δ [95% paired-bootstrap interval]" per metric at ``group``, in points."""
    rows = per_seed[per_seed["group"] == group]
    out = []
    for seed, sub in rows.groupby("seed", sort=True):
        sub = sub.set_index("metric")
        out.append({"seed": str(seed), **{
            STUDY_METRICS[m]: f"{_pts(sub.loc[m, 'diff'], True)} [{_pts(sub.loc[m, 'diff_low'], True)}, "
                              f"{_pts(sub.loc[m, 'diff_high'], True)}]" if m in sub.index else "–" for m in metrics}})
    return pd.DataFrame(out)


def study_markdown(runs: pd.DataFrame, per_seed: pd.DataFrame, across: pd.DataFrame, labels: dict[str, str],
                   alpha: float = 0.05, power: float = 0.8) -> str:
    """The study's Markdown: every run, then per format and arm the across-seed tests, per group, and per seed."""
    parts = ["### Runs\n", to_markdown(study_runs_table(runs, labels))]
    note = (f"Δ = arm − reference in points (AUC × 100), averaged over the groups' tasks and instructions; "
            f"t-interval "
            f"and p (t): paired t-test over seeds (the evaluation sample held fixed); p (sign-flip): exact sign-flip "
            f"permutation test over seeds (at least 2/2^n: 0.25 with 3 seeds); MDD: minimum detectable difference at "
            f"alpha {alpha:g}, power {power:g}, from the seed-to-seed SD of Δ and the within-seed bootstrap SE "
            f"(coinlib.evaluate.compare.min_detectable_difference); seeds for MDD 2: the seeds that would bring the "
            f"MDD "
            f"to 2 points at this seed-to-seed SD and bootstrap SE.\n")
    if len(across):
        for (fmt, arm, ref), sub in across.groupby(["format", "arm", "reference"], sort=False):
            seeds = per_seed[(per_seed["format"] == fmt) & (per_seed["arm"] == arm)]
            title = f"{labels.get(arm, arm)} − {labels.get(ref, ref)}, {fmt} format"
            parts += [f"\n### {title}: average over groups\n",
                      to_markdown(study_across_table(sub, seeds, alpha=alpha, power=power)), "\n" + note,
                      f"\n### {title}: per group, Δ [t-interval] (MDD)\n", to_markdown(study_group_table(sub)),
                      f"\n### {title}: within each seed, Δ [95% paired bootstrap]\n",
                      to_markdown(study_seed_table(seeds))]
    return "".join(parts)
