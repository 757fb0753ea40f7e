"""Figure 3 draws the summary's numbers, models in role order and colours."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from coinlib.evalfig import figure3_data, plot_figure3
from coinlib.figures import ROLE_COLORS


def _summary() -> pd.DataFrame:
    rows = [(m, t, g, acc, std) for m, acc, std in (("run-coin", 0.6, 0.02), ("base", 0.5, 0.1), ("run-cit", 0.4, 0.04))
            for t in ("sst2", "rte") for g in ("clean", "checklist")]
    return pd.DataFrame(rows, columns=["model", "task", "group", "mean_acc", "std_acc"])


def test_figure3_bars_in_role_order_and_colours():
    data = figure3_data(_summary())
    assert set(data["n_tasks"]) == {2}
    fig = plot_figure3(data, {"base": "base", "run-cit": "cit", "run-coin": "coin"})
    acc, std = fig.axes
    handles, labels = std.get_legend_handles_labels()
    assert labels == ["base", "CIT (run-cit)", "COIN (run-coin)"]
    assert [to_hex(h.patches[0].get_facecolor()) for h in handles] == [ROLE_COLORS[r] for r in ("base", "cit", "coin")]
    heights = [round(p.get_height(), 6) for p in acc.patches]
    assert heights == pytest.approx([50, 50, 40, 40, 60, 60])  # per model (role order), per group
    assert [round(p.get_height(), 6) for p in std.patches][:2] == pytest.approx([10, 10])
    plt.close(fig)


def test_figure3_without_roles_keeps_the_summary_order():
    fig = plot_figure3(figure3_data(_summary()))
    assert fig.axes[1].get_legend_handles_labels()[1] == ["run-coin", "base", "run-cit"]
    plt.close(fig)
