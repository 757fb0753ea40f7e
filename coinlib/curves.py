"""Training curves of a run (L_ent, L_ctr, the contrastive weight w, cosines) from its ``train_log.csv``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from coinlib.figures import save_figure, use_style

PANELS = [("loss_ent", "L_ent (generation)"), ("loss_ctr", "L_ctr (InfoNCE)"), ("weight", "w = min(λ, L_ent/L_ctr)"),
          ("cos", "cosine to original")]


def read_log(run_dir: str | Path) -> pd.DataFrame:
    """The run's training log; a clear message when the run has not been trained yet."""
    path = Path(run_dir) / "train_log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Fix: train the run first (notebook 02 or coinlib.train.train(P)).")
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
