"""The paper's Figure 3: accuracy and std over instructions per perturbation group, models side by side."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from coinlib.figures import GROUP_LABELS, ROLE_COLORS, use_style
from coinlib.report import ROLE_LABELS


def figure3_data(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model x group: mean over tasks of the mean accuracy and of the std over instructions (``n_tasks``)."""
    data = summary.groupby(["model", "group"], sort=False).agg(
        mean_acc=("mean_acc", "mean"), std_acc=("std_acc", "mean"), n_tasks=("task", "nunique")).reset_index()
    order = {g: i for i, g in enumerate(GROUP_LABELS)}
    return data.sort_values("group", key=lambda s: s.map(order).fillna(len(order)), kind="stable").reset_index(drop=True)


def plot_figure3(data: pd.DataFrame, roles: dict[str, str] | None = None) -> plt.Figure:
    """Two panels (accuracy, std; in %) with one bar per model in each perturbation group.

    ``roles`` maps model labels to "base", "cit" or "coin": those models get the role's colour of every figure
    and a legend entry naming the role; models are drawn in the order base, CIT, COIN, then the others.
    """
    use_style()
    roles = {m: r for m, r in (roles or {}).items() if r in ROLE_COLORS}
    rank = {r: i for i, r in enumerate(ROLE_COLORS)}
    models = sorted(dict.fromkeys(data["model"]), key=lambda m: rank.get(roles.get(m), len(rank)))
    groups = list(dict.fromkeys(data["group"]))
    others = iter(c for c in plt.get_cmap("tab10").colors if c not in ROLE_COLORS.values())
    colors = {m: ROLE_COLORS[roles[m]] if m in roles else next(others) for m in models}
    width = 0.8 / len(models)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9))
    for ax, col, title in zip(axes, ("mean_acc", "std_acc"), ("average accuracy (%)", "std over instructions (%)")):
        table = data.pivot(index="group", columns="model", values=col).reindex(index=groups, columns=models)
        for i, model in enumerate(models):
            x = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
            label = f"{ROLE_LABELS[roles[model]]} ({model})" if model in roles and roles[model] != model else model
            ax.bar(x, 100 * table[model].to_numpy(), width, color=colors[model], label=label)
        ax.set_xticks(np.arange(len(groups)), [GROUP_LABELS.get(g, g).replace(" (", "\n(") for g in groups],
                      fontsize=8.5)
        ax.set_title(title)
    axes[0].set_ylim(0, 100)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, title="model")
    n_tasks = int(data["n_tasks"].max())
    fig.suptitle(f"Robustness to instruction variations over {n_tasks} GLUE task(s) (paper Figure 3)")
    fig.tight_layout()
    return fig
