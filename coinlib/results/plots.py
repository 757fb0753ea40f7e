"""Figures of the analyses in one seaborn style, saved as PNG and PDF with the CSV behind each.

Colours are fixed per perturbation group and per model role, so a group or a model looks the same in every figure.
Names say what a figure shows and which paper figure or table it corresponds to (``fig4_umap_cola``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from coinlib.core.fileio import atomic_write
from coinlib.core.groups import GROUP_LABELS
from coinlib.core.tasks import CATEGORIES
from coinlib.evaluate.metrics import instruction_accuracy
from coinlib.results.tables import ROLE_LABELS, STUDY_METRICS, average_over_tasks

GROUP_COLORS = {
    "clean": "#1f77b4", "deepwordbug": "#ff7f0e", "textfooler": "#d62728", "checklist": "#2ca02c",
    "semantic": "#9467bd", "average": "#222222",
}
ROLE_COLORS = {"base": "#8c8c8c", "cit": "#dd8452", "coin": "#55a868"}
SOURCE_LABELS = {"paper": "paper", "ours": "ours"}


def use_style() -> None:
    """The one style of every figure of the project."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1,
                  rc={"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def source_title(source: str, model: str) -> str:
    """Panel title naming whose numbers these are and the model (scale) they come from."""
    return f"{SOURCE_LABELS.get(source, source)}: {model}"


def save_figure(fig: plt.Figure, data: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name``.png, .pdf and .csv (the data drawn) into ``out_dir``, each atomically; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        paths.append(atomic_write(out_dir / f"{name}.{ext}", lambda tmp, ext=ext: fig.savefig(tmp, format=ext)))
    paths.append(atomic_write(out_dir / f"{name}.csv", lambda tmp: data.to_csv(tmp, index=False)))
    return paths


def save_table(table: pd.DataFrame | None, out_dir: str | Path, name: str, markdown: str | None = None) -> list[Path]:
    """Write ``name``.csv (unless ``table`` is None) and ``name``.md (when given) atomically; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [] if table is None else [atomic_write(out_dir / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False))]
    if markdown is not None:
        paths.append(atomic_write(out_dir / f"{name}.md", lambda tmp: Path(tmp).write_text(markdown, encoding="utf-8")))
    return paths


# ---------------------------------------------------------------------------------------------- plots
def table2_share_data(counts: pd.DataFrame) -> pd.DataFrame:
    """Share of entries per dataset in the paper's Table 2 and in a build (``task_counts.csv`` of
    :func:`coinlib.data.pairs.load_or_build`: ``dataset``, ``paper_count``, ``entries``)."""
    return counts.assign(paper=counts.paper_count / counts.paper_count.sum(),
                         ours=counts.entries / max(counts.entries.sum(), 1))[["dataset", "paper", "ours"]]


def plot_table2_share(share: pd.DataFrame) -> plt.Figure:
    """Horizontal bars per dataset: the paper's share of entries beside this build's (:func:`table2_share_data`)."""
    use_style()
    fig, ax = plt.subplots(figsize=(7, 6))
    share.set_index("dataset")[["paper", "ours"]].iloc[::-1].plot.barh(ax=ax, width=0.8)
    ax.set_xlabel("share of entries")
    ax.set_ylabel("")
    ax.set_title("Entries per dataset: paper Table 2 vs this build")
    return fig


def plot_task_categories(comparison: pd.DataFrame) -> plt.Figure:
    """Table 1 as bars: accuracy per category and model role, error bars = mean over the category's tasks and groups
    of the std over instructions (``mean_task_std``); one panel per source."""
    use_style()
    rows = comparison[comparison["role"].isin(ROLE_LABELS)]
    panels = list(dict.fromkeys(zip(rows["source"], rows["model"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), sharey=True, squeeze=False)
    roles = [r for r in ROLE_LABELS if r in set(rows["role"])]
    cats = [c for c in CATEGORIES if c in set(rows["category"])]
    width = 0.8 / max(len(roles), 1)
    for ax, (source, model) in zip(axes[0], panels):
        sub = rows[(rows["source"] == source) & (rows["model"] == model)].set_index(["role", "category"])
        for i, role in enumerate(roles):
            vals = [sub.loc[(role, c)] if (role, c) in sub.index else None for c in cats]
            x = np.arange(len(cats)) + (i - (len(roles) - 1) / 2) * width
            acc = [100 * v["mean_acc"] if v is not None else np.nan for v in vals]
            err = [100 * v["mean_task_std"] if v is not None else np.nan for v in vals]
            ax.bar(x, acc, width, yerr=err, capsize=3, color=ROLE_COLORS[role], label=ROLE_LABELS[role])
        ax.set_xticks(np.arange(len(cats)), [CATEGORIES[c].replace(" ", "\n", 1) for c in cats])
        ax.set_title(source_title(source, model))
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("accuracy (%), bars ± mean task std")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("Accuracy by task category (paper Table 1)")
    fig.tight_layout()
    return fig


def plot_lambda_ablation(comparison: pd.DataFrame) -> plt.Figure:
    """Figure 5: accuracy and std by lambda (log scale) per perturbation group; rows = paper and ours."""
    use_style()
    panels = list(dict.fromkeys(zip(comparison["source"], comparison["model"])))
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.3 * len(panels)), squeeze=False, sharex=True)
    groups = [g for g in GROUP_COLORS if g in set(comparison["group"])]
    for row, (source, model) in zip(axes, panels):
        sub = comparison[(comparison["source"] == source) & (comparison["model"] == model)]
        for ax, col, what in zip(row, ("mean_acc", "std_acc"), ("accuracy (%)", "std over instructions (%)")):
            for g in groups:
                line = sub[sub["group"] == g].sort_values("lambda")
                ax.plot(line["lambda"], 100 * line[col], marker="o", color=GROUP_COLORS[g], label=GROUP_LABELS[g],
                        lw=2.4 if g == "average" else 1.4, ls="-" if g == "average" else "--")
            ax.set_xscale("log")
            ax.set_ylabel(what)
            ax.set_title(f"{source_title(source, model)}\n{what.split(' ')[0]}, {sub['n_tasks'].max()} tasks")
    for ax in axes[-1]:
        ax.set_xlabel("λ (upper bound of the contrastive weight)")
    axes[0][1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("COIN by λ (paper Figure 5 / Table 4)")
    fig.tight_layout()
    return fig


def plot_paired_difference(paired: pd.DataFrame) -> plt.Figure:
    """COIN minus CIT per group (output of :func:`coinlib.evaluate.compare.paired_bootstrap`): accuracy and std over
    instructions, points with their bootstrap intervals; right of zero = COIN higher."""
    use_style()
    groups = list(paired["group"])
    y = np.arange(len(groups))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(groups) + 1.6), sharey=True)
    for ax, col, what in zip(axes, ("acc_diff", "std_diff"),
                             ("accuracy (points)", "std over instructions (points; lower = more robust)")):
        est = 100 * paired[col].to_numpy()
        err = 100 * np.abs(paired[[f"{col}_low", f"{col}_high"]].to_numpy().T - paired[col].to_numpy())
        colors = [GROUP_COLORS.get(g, GROUP_COLORS["average"]) for g in groups]
        for yi, e, lo, hi, c in zip(y, est, *err, colors):
            ax.errorbar(e, yi, xerr=[[lo], [hi]], fmt="o", color=c, capsize=3)
        ax.axvline(0, color="#444444", lw=1)
        ax.set_xlabel(f"Δ {what}")
    axes[0].set_yticks(y, [GROUP_LABELS.get(g, g) for g in groups])
    n_inst, n_tasks = paired["n_instances"].iloc[0], paired["n_tasks"].iloc[0]
    fig.suptitle(f"{paired['model_a'].iloc[0]} − {paired['model_b'].iloc[0]}, paired, 95% bootstrap intervals "
                 f"({n_tasks} tasks, {n_inst} instances)")
    fig.tight_layout()
    return fig


def plot_umap(points: pd.DataFrame, model: str) -> plt.Figure:
    """Figure 4: UMAP of last-token representations coloured by perturbation group, one panel per role (CIT, COIN).

    ``points``: output of :func:`coinlib.evaluate.represent.umap_points`; ``model``: base model name, for the titles.
    """
    use_style()
    panels = list(dict.fromkeys(zip(points["role"], points["run"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
    groups = [g for g in GROUP_COLORS if g in set(points["group"])]
    for ax, (role, run) in zip(axes[0], panels):
        sub = points[(points["role"] == role) & (points["run"] == run)]
        for g in groups:
            pts = sub[sub["group"] == g]
            ax.scatter(pts["umap_x"], pts["umap_y"], s=12, alpha=0.75, color=GROUP_COLORS[g], label=GROUP_LABELS[g],
                       edgecolors="none")
        ax.set_title(f"{ROLE_LABELS.get(role, role)} (run {run!r})")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, markerscale=2)
    fig.suptitle(f"Last-token representations of instruction variants, {model} (paper Figure 4)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- Figure 3
# Accuracy and std over instructions per perturbation group, models side by side.

def _in_group_order(data: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by group in the order of :data:`GROUP_LABELS` (other groups last), otherwise as they were."""
    order = {g: i for i, g in enumerate(GROUP_LABELS)}
    return data.sort_values("group", key=lambda s: s.map(order).fillna(len(order)), kind="stable").reset_index(drop=True)


def figure3_data(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model x group: mean accuracy over tasks and the pooled std over instructions (the tables' "Average",
    :func:`coinlib.results.tables.average_over_tasks`), with ``n_tasks`` and the 95% interval of the accuracy.

    ``ci_low``/``ci_high``: the summary's bootstrap intervals (instances resampled); over several tasks, independent
    samples, each side's half-widths add in quadrature, ``mean -/+ sqrt(sum_t half_t^2) / n_tasks`` (exact for one
    task, a normal approximation for several). NaN when the summary has no intervals.
    """
    data = average_over_tasks(summary, by=("model", "group"))
    rows = summary[summary["task"] != "average"]
    if {"ci_low", "ci_high"} <= set(rows.columns):
        half = rows.assign(low=rows["mean_acc"] - rows["ci_low"], high=rows["ci_high"] - rows["mean_acc"])
        rss = half.groupby(["model", "group"], sort=False)[["low", "high"]].agg(
            lambda h: np.sqrt(np.sum(np.square(h))) / len(h))
        data = data.join(rss, on=["model", "group"])
        data["ci_low"], data["ci_high"] = data["mean_acc"] - data.pop("low"), data["mean_acc"] + data.pop("high")
    else:
        data["ci_low"] = data["ci_high"] = np.nan
    return _in_group_order(data)


def plot_figure3(data: pd.DataFrame, roles: dict[str, str] | None = None) -> plt.Figure:
    """Two panels (accuracy with its 95% interval, :func:`figure3_data`; std over instructions; in %) with one bar per
    model in each perturbation group.

    ``roles`` maps model labels to "base", "cit" or "coin": those models get the role's colour of every figure
    and a legend entry naming the role; models are drawn in the order base, CIT, COIN, then the others.
    """
    use_style()
    models, colors, labels = _models_by_role(list(dict.fromkeys(data["model"])), roles)
    groups = list(dict.fromkeys(data["group"]))
    width = 0.8 / len(models)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9))
    has_ci = {"ci_low", "ci_high"} <= set(data.columns) and data[["ci_low", "ci_high"]].notna().any().any()
    titles = ("average accuracy (%), 95% interval" if has_ci else "average accuracy (%)", "std over instructions (%)")
    def table(col: str) -> pd.DataFrame:
        return data.pivot(index="group", columns="model", values=col).reindex(index=groups, columns=models)

    for ax, col, title in zip(axes, ("mean_acc", "std_acc"), titles):
        values = table(col)
        for i, model in enumerate(models):
            x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
            err = None
            if col == "mean_acc" and has_ci:
                bounds = np.stack([table(c)[model] for c in ("ci_low", "ci_high")])
                err = 100 * np.abs(bounds - values[model].to_numpy())
            ax.bar(x, 100 * values[model].to_numpy(), width, color=colors[model], label=labels[model], yerr=err,
                   capsize=2.5, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        ax.set_xticks(np.arange(len(groups)), [GROUP_LABELS.get(g, g).replace(" (", "\n(") for g in groups],
                      fontsize=8.5)
        ax.set_title(title)
    axes[0].set_ylim(0, 100)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="model")
    n_tasks = int(data["n_tasks"].max())
    fig.suptitle(f"Robustness to instruction variations over {n_tasks} GLUE task(s) (paper Figure 3)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- Figure 3 companion
# The label-free metrics (coinlib.evaluate.metrics) per perturbation group, models side by side.

LABEL_FREE_PANELS = [
    ("auc", "ROC AUC of the label-score margin (%)"), ("cal_acc", "calibrated accuracy (%)"),
    ("flip_rate", "flip rate vs clean, answers (%)"), ("flip_rate_cal", "flip rate vs clean, calibrated (%)"),
]


def figure3_label_free_data(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model x group: mean over tasks (those where it is defined) of each label-free metric, and ``n_tasks``."""
    cols = ["auc", "cal_acc", "flip_rate", "flip_rate_cal", "margin_sd", "posix"]
    missing = [c for c in cols if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks {missing}; it predates the label-free metrics. Fix: rerun the evaluation "
                         "(python -m coinlib.evaluate params/X.yaml --merge rebuilds summary.csv from the cache).")
    data = summary.groupby(["model", "group"], sort=False).agg(
        **{c: (c, "mean") for c in cols}, n_tasks=("task", "nunique")).reset_index()
    return _in_group_order(data)


def _models_by_role(models: list[str], roles: dict[str, str] | None) -> tuple[list[str], dict, dict]:
    """Models in the order base, CIT, COIN, then the others; each one's colour and legend label (as Figure 3)."""
    roles = {m: r for m, r in (roles or {}).items() if r in ROLE_COLORS}
    rank = {r: i for i, r in enumerate(ROLE_COLORS)}
    ordered = sorted(models, key=lambda m: rank.get(roles.get(m), len(rank)))
    others = iter(c for c in plt.get_cmap("tab10").colors if c not in ROLE_COLORS.values())
    colors = {m: ROLE_COLORS[roles[m]] if m in roles else next(others) for m in ordered}
    labels = {m: f"{ROLE_LABELS[roles[m]]} ({m})" if m in roles and roles[m] != m else m for m in ordered}
    return ordered, colors, labels


def plot_figure3_label_free(data: pd.DataFrame, roles: dict[str, str] | None = None) -> plt.Figure:
    """Four panels (:data:`LABEL_FREE_PANELS`, in %) with one bar per model in each group; colours and model order as
    :func:`plot_figure3`. Clean has no flip rate (it is the reference); a dashed line marks chance AUC."""
    use_style()
    models, colors, labels = _models_by_role(list(dict.fromkeys(data["model"])), roles)
    groups = list(dict.fromkeys(data["group"]))
    width = 0.8 / len(models)
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.2))
    for ax, (col, title) in zip(axes.flat, LABEL_FREE_PANELS):
        table = data.pivot(index="group", columns="model", values=col).reindex(index=groups, columns=models)
        for i, model in enumerate(models):
            x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
            ax.bar(x, 100 * table[model].to_numpy(), width, color=colors[model], label=labels[model])
        ax.set_xticks(np.arange(len(groups)), [GROUP_LABELS.get(g, g).replace(" (", "\n(") for g in groups],
                      fontsize=8.5)
        ax.set_title(title)
        ax.set_ylim(0, 100)
    axes[0][0].axhline(50, color="#444444", lw=1, ls="--")
    axes[0][1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="model")
    fig.suptitle(f"Label-free robustness over {int(data['n_tasks'].max())} GLUE task(s) (companion of Figure 3)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- instructions
# Accuracy of every single instruction: the spread Figure 3's std summarises, per task, group and model.

def instruction_data(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model x task x group x instruction: its accuracy ``acc`` over the instances (and ``instruction``, the text,
    when the predictions hold it), groups in Figure 3's order."""
    data = instruction_accuracy(predictions)
    if "instruction" in predictions.columns:
        text = predictions.drop_duplicates(["model", "task", "group", "instruction_id"])
        data = data.merge(text[["model", "task", "group", "instruction_id", "instruction"]], how="left")
    return _in_group_order(data)


def plot_instruction_accuracy(data: pd.DataFrame, roles: dict[str, str] | None = None) -> plt.Figure:
    """One panel per task: each instruction's accuracy as a point, per group (x) and model (colour, side by side),
    and a line at their mean (the summary's ``mean_acc``); colours and model order as :func:`plot_figure3`."""
    use_style()
    models, colors, labels = _models_by_role(list(dict.fromkeys(data["model"])), roles)
    tasks, groups = list(dict.fromkeys(data["task"])), list(dict.fromkeys(data["group"]))
    ncols = min(len(tasks), 5)
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 + 0.9 * len(groups) * ncols, 3.4 * nrows), squeeze=False,
                             sharey=True)
    width = 0.8 / len(models)
    for ax, task in zip(axes.flat, tasks):
        for i, model in enumerate(models):
            sub = data[(data["task"] == task) & (data["model"] == model)]
            xs, ys = [], []
            for gi, group in enumerate(groups):
                acc = 100 * sub.loc[sub["group"] == group, "acc"].to_numpy()
                center = gi + (i - (len(models) - 1) / 2) * width
                spread = np.linspace(-0.3, 0.3, len(acc)) if len(acc) > 1 else np.zeros(len(acc))
                xs += list(center + spread * width)
                ys += list(acc)
                if len(acc):
                    ax.hlines(acc.mean(), center - 0.4 * width, center + 0.4 * width, color=colors[model], lw=2)
            ax.scatter(xs, ys, s=16, color=colors[model], alpha=0.8, edgecolors="none", label=labels[model])
        ax.set_xticks(np.arange(len(groups)), [GROUP_LABELS.get(g, g).replace(" (", "\n(") for g in groups],
                      fontsize=8)
        ax.set_title(task)
        ax.set_ylim(-2, 102)
    for ax in axes.flat[len(tasks):]:
        ax.remove()
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    axes.flat[len(tasks) - 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="model")
    fig.suptitle("Accuracy of each instruction (points) and their mean (lines), per task, group and model")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- training curves
# L_ent, L_ctr, the contrastive weight w and the cosines of a run, from its ``train_log.csv``.

PANELS = [("loss_ent", "L_ent (generation)"), ("loss_ctr", "L_ctr (InfoNCE)"), ("weight", "w = min(λ, L_ent/L_ctr)"),
          ("cos", "cosine to original")]


def read_log(run_dir: str | Path) -> pd.DataFrame:
    """The run's training log; a clear message when the run has not been trained yet."""
    path = Path(run_dir) / "train_log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Fix: train the run first (notebook 02 or coinlib.train.trainer.train(P)).")
    return pd.read_csv(path)


def plot_training_curves(log: pd.DataFrame, title: str = "") -> plt.Figure:
    """One panel per quantity against the optimizer step; CIT runs (no L_ctr) leave the contrastive panels empty."""
    use_style()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (col, label) in zip(axes, PANELS):
        if col == "cos":
            for c, name in (("cos_pos", "positive"), ("cos_neg", "hard negative")):
                if log[c].notna().any():
                    ax.plot(log["step"], log[c], marker="o", label=name)
            ax.legend(fontsize=8)
        elif log[col].notna().any():
            ax.plot(log["step"], log[col], marker="o")
        else:
            ax.text(0.5, 0.5, "contrastive term off (CIT)", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=label, xlabel="step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_training_curves(run_dir: str | Path, figures_dir: str | Path, title: str = "") -> list[Path]:
    """Plot the run's curves to ``figures_dir``/training_curves.{png,pdf,csv}."""
    log = read_log(run_dir)
    fig = plot_training_curves(log, title)
    cols = ["step", "loss", "loss_ent", "loss_ctr", "weight", "cos_pos", "cos_neg"]
    paths = save_figure(fig, log[cols], figures_dir, "training_curves")
    plt.close(fig)
    return paths


def plot_training_losses(logs: pd.DataFrame, labels: dict[str, str] | None = None) -> plt.Figure:
    """The generation loss (and the contrastive loss where an arm has one) against the optimizer step, one line per
    run coloured by arm, dashed while a run is part-way (``logs``: rows of
    :func:`coinlib.study.report.training_logs`)."""
    use_style()
    labels = labels or {}
    colors = _arm_colors(list(dict.fromkeys(logs["arm"])))
    panels = [("loss_ent", "L_ent (generation)")] + ([("loss_ctr", "L_ctr (InfoNCE)")]
                                                     if logs["loss_ctr"].notna().any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (col, title) in zip(axes[0], panels):
        for arm, color in colors.items():
            shown = False
            for (run, finished), rows in logs[logs["arm"] == arm].groupby(["run", "finished"], sort=True):
                rows = rows.dropna(subset=[col]).sort_values("step")
                if rows.empty:
                    continue
                ax.plot(rows["step"], rows[col], "-" if finished else "--", color=color, lw=1, alpha=0.8,
                        label=None if shown else labels.get(arm, arm))
                shown = True
        ax.set(title=title, xlabel="optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = {}  # every arm once, also one without a line in the last panel (CIT has no L_ctr)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if not logs["finished"].all():
        fig.suptitle("training losses as logged (dashed: a run still training, up to its committed step)")
    fig.tight_layout()
    return fig


def plot_seed_differences(per_seed: pd.DataFrame, across: pd.DataFrame, labels: dict[str, str] | None = None,
                          metrics: tuple[str, ...] = ("cal_acc", "auc", "std_cal_acc", "flip_rate_cal")) -> plt.Figure:
    """Arm minus reference per group for one input format: each seed's difference as a point, the mean over seeds
    with its 95% t-interval, and a grey band of ± the minimum detectable difference (rows of
    :func:`coinlib.evaluate.compare.long_format` per seed and of :func:`coinlib.evaluate.compare.across_seeds`)."""
    use_style()
    labels = labels or {}
    groups = list(dict.fromkeys(per_seed["group"]))
    arms = list(dict.fromkeys(per_seed["arm"]))
    y0 = np.arange(len(groups))[::-1].astype(float)
    offsets = np.linspace(-0.18, 0.18, len(arms)) if len(arms) > 1 else np.zeros(1)
    palette = [ROLE_COLORS["coin"], "#4c72b0", "#c44e52", "#8172b3", "#937860"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 0.5 * len(groups) + 1.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics):
        for k, arm in enumerate(arms):
            color = palette[k % len(palette)]
            seeds = per_seed[(per_seed["arm"] == arm) & (per_seed["metric"] == metric)]
            summary = across[(across["arm"] == arm) & (across["metric"] == metric)].set_index("group")
            for gi, group in enumerate(groups):
                y = y0[gi] + offsets[k]
                d = 100 * seeds.loc[seeds["group"] == group, "diff"].to_numpy()
                ax.scatter(d, np.full(d.shape, y + 0.08), s=14, facecolors="none", edgecolors=color, lw=1)
                if group in summary.index and not pd.isna(summary.loc[group, "mean_diff"]):
                    r = summary.loc[group]
                    if not pd.isna(r["mdd"]):
                        ax.fill_betweenx([y - 0.1, y + 0.1], -100 * r["mdd"], 100 * r["mdd"], color="#dddddd", lw=0)
                    lo, hi = 100 * (r["mean_diff"] - r["ci_low"]), 100 * (r["ci_high"] - r["mean_diff"])
                    err = None if pd.isna(lo) else [[lo], [hi]]
                    ax.errorbar(100 * r["mean_diff"], y, xerr=err, fmt="o", color=color, capsize=3)
        ax.axvline(0, color="#444444", lw=1)
        ax.set_title(STUDY_METRICS.get(metric, metric), fontsize=10)
        ax.set_xlabel("Δ (points)")
    axes[0].set_yticks(y0, [GROUP_LABELS.get(g, g) for g in groups])
    ref = labels.get(per_seed["reference"].iloc[0], per_seed["reference"].iloc[0]) if len(per_seed) else ""
    fmt = per_seed["format"].iloc[0] if len(per_seed) else ""
    handles = [Line2D([], [], marker="o", ls="", color=palette[k % len(palette)], label=labels.get(a, a))
               for k, a in enumerate(arms)]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"arm − {ref} ({fmt} format): seeds (circles), mean ± 95% t-interval, grey ± minimum detectable "
                 "difference")
    fig.tight_layout()
    return fig


def plot_dose_response(data: pd.DataFrame,
                       metrics: tuple[str, ...] = ("cal_acc", "auc", "flip_rate_cal")) -> plt.Figure:
    """Metrics against the contrastive weight lambda (0 = CIT) for one input format: each seed as a circle, the
    mean over seeds as a line (``data``: one row per run with ``lambda``, ``seed`` and the metric columns)."""
    use_style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics):
        ax.scatter(data["lambda"], 100 * data[metric], s=16, facecolors="none", edgecolors="#4c72b0", lw=1)
        mean = data.groupby("lambda")[metric].mean()
        ax.plot(mean.index, 100 * mean.to_numpy(), "o-", color=ROLE_COLORS["coin"])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(sorted(mean.index), [f"{x:g}" for x in sorted(mean.index)])
        ax.set_xlabel("lambda (0 = CIT)")
        ax.set_title(STUDY_METRICS.get(metric, metric), fontsize=10)
    fmt = data["format"].iloc[0] if "format" in data and len(data) else ""
    counts = data.groupby("lambda")["seed"].nunique()
    seeds = f"{counts.min()}-{counts.max()}" if counts.min() != counts.max() else f"{counts.min()}"
    fig.suptitle(f"lambda dose-response ({fmt} format, average over groups; {seeds} seed(s) per lambda: circles, "
                 "line = mean)")
    fig.tight_layout()
    return fig


STUDY_PALETTE = ["#dd8452", "#55a868", "#4c72b0", "#c44e52", "#8172b3", "#937860", "#da8bc3"]


def _arm_colors(arms: list[str]) -> dict[str, str]:
    """One colour per arm in order of appearance (CIT and COIN as everywhere else)."""
    fixed = {a: ROLE_COLORS[a] for a in arms if a in ROLE_COLORS}
    rest = [c for c in STUDY_PALETTE if c not in fixed.values()]
    return fixed | {a: rest[k % len(rest)] for k, a in enumerate(a for a in arms if a not in fixed)}


def plot_metric_curves(points: pd.DataFrame, labels: dict[str, str] | None = None,
                       metrics: tuple[str, ...] = ("auc", "cal_acc", "flip_rate_cal", "margin_rank")) -> plt.Figure:
    """Metrics against the training step for one input format: each seed's run as a thin line from the base model
    (step 0) through its part-way evaluations, the mean over seeds per arm and step as a thick line at the steps
    every seed of the arm has, so a mean never mixes seeds with one seed (``points``: rows of
    :func:`coinlib.study.curves.curve_points`)."""
    use_style()
    labels = labels or {}
    base = points[points["arm"] == "base"]
    trained = points[points["arm"] != "base"]
    colors = _arm_colors(list(dict.fromkeys(trained["arm"])))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.3))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for arm, color in colors.items():
            runs = trained[trained["arm"] == arm]
            for _, run in runs.groupby("seed"):
                line = pd.concat([base, run]).sort_values("step")
                ax.plot(line["step"], 100 * line[metric], "-", color=color, lw=0.8, alpha=0.5)
            complete = runs.groupby("step")["seed"].nunique() == runs["seed"].nunique()  # steps every seed has
            mean = pd.concat([base, runs[runs["step"].isin(complete[complete].index)]]).groupby("step")[metric].mean()
            ax.plot(mean.index, 100 * mean.to_numpy(), "o-", color=color, lw=2, ms=4, label=labels.get(arm, arm))
        ax.set_xlabel("optimizer step (0 = base model)")
        ax.set_title(STUDY_METRICS.get(metric, metric), fontsize=10)
    np.atleast_1d(axes)[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle("metrics along training (thin: one seed; thick: mean over seeds, at steps all seeds have); "
                 "flip rate and rank correlation over the perturbed groups")
    fig.tight_layout()
    return fig


def plot_skill_matched(points: pd.DataFrame, reference: str, labels: dict[str, str] | None = None,
                       metrics: tuple[str, ...] = ("flip_rate_cal", "margin_rank")) -> plt.Figure:
    """Instruction sensitivity against skill (AUC): every run as a line through its evaluations in step order, the
    base model as a black star; at equal AUC, a point below the reference's line (flip rate) or above it (rank
    correlation) is less sensitive to the instruction's wording than the reference was at that skill."""
    use_style()
    labels = labels or {}
    base = points[points["arm"] == "base"]
    trained = points[points["arm"] != "base"]
    arms = list(dict.fromkeys([reference, *trained["arm"]]))
    colors = _arm_colors(arms)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for arm in arms:
            for k, (_, run) in enumerate(trained[trained["arm"] == arm].groupby("seed")):
                line = pd.concat([base, run]).sort_values("step")
                ax.plot(100 * line["auc"], 100 * line[metric], "o-", color=colors[arm], ms=3,
                        lw=2 if arm == reference else 1, label=labels.get(arm, arm) if k == 0 else None)
        ax.plot(100 * base["auc"], 100 * base[metric], "*", color="black", ms=11, label="base model")
        ax.set_xlabel("ROC AUC of the margin (skill)")
        ax.set_title(STUDY_METRICS.get(metric, metric), fontsize=10)
    np.atleast_1d(axes)[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(f"sensitivity at equal skill: each run from the base model through its steps ({labels.get(reference, reference)} thick)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- command line
def _evaluation_table(path: str | Path, file: str, kind: str, required: set[str]) -> pd.DataFrame:
    """An evaluator's output table (``.parquet`` or CSV); errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Fix: give the {file} of `python -m coinlib.evaluate` "
                                "or `python -m coinlib.evaluate.lmeval summarize`.")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; it is not {kind}.")
    return frame


def _save_plot(data: pd.DataFrame, plot, roles: dict[str, str] | None, out_dir: str | Path, name: str) -> list[Path]:
    fig = plot(data, roles)
    paths = save_figure(fig, data, out_dir, name)
    plt.close(fig)
    return paths


def save_figure3(summary_csv: str | Path, out_dir: str | Path, roles: dict[str, str] | None = None) -> list[Path]:
    """Figure 3 (``fig3_robustness`` .png/.pdf/.csv) from any evaluator's ``summary.csv``; a clear error if unusable."""
    summary = _evaluation_table(summary_csv, "summary.csv", "an evaluation summary",
                                {"model", "task", "group", "mean_acc", "std_acc"})
    return _save_plot(figure3_data(summary), plot_figure3, roles, out_dir, "fig3_robustness")


def save_instruction_figure(predictions: str | Path, out_dir: str | Path,
                            roles: dict[str, str] | None = None) -> list[Path]:
    """The per-instruction accuracy figure (``fig3_instructions`` .png/.pdf/.csv) from any evaluator's predictions
    table (``predictions.parquet`` or ``.csv``); a clear error if unusable."""
    frame = _evaluation_table(predictions, "predictions.parquet (or .csv)", "a predictions table",
                              {"model", "task", "group", "instruction_id", "correct"})
    return _save_plot(instruction_data(frame), plot_instruction_accuracy, roles, out_dir, "fig3_instructions")


def main(argv: list[str] | None = None) -> int:
    """``python -m coinlib.results.plots figure3 SUMMARY_CSV --out DIR [--roles MODEL=ROLE ...]`` (Figure 3) and
    ``python -m coinlib.results.plots instructions PREDICTIONS --out DIR [--roles ...]`` (each instruction)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m coinlib.results.plots", description="Figures from evaluation tables.")
    sub = ap.add_subparsers(dest="figure", required=True)
    f3 = sub.add_parser("figure3", help="paper Figure 3 from a summary.csv")
    f3.add_argument("table", metavar="summary_csv")
    f3.add_argument("--out", required=True, help="folder for fig3_robustness.png/.pdf/.csv")
    ins = sub.add_parser("instructions", help="accuracy of each instruction from a predictions table")
    ins.add_argument("table", metavar="predictions", help="predictions.parquet or .csv")
    ins.add_argument("--out", required=True, help="folder for fig3_instructions.png/.pdf/.csv")
    for p in (f3, ins):
        p.add_argument("--roles", nargs="*", default=[], metavar="MODEL=ROLE", help="roles base, cit, coin (colours)")
    args = ap.parse_args(argv)
    roles = dict(r.split("=", 1) for r in args.roles if "=" in r)
    save = save_figure3 if args.figure == "figure3" else save_instruction_figure
    try:
        paths = save(args.table, args.out, roles)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("saved:", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
