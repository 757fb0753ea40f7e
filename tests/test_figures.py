"""Figures draw the numbers of their tables and are saved with the CSV behind them."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from coinlib import figures, report


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _comparison():
    ours = pd.DataFrame({
        "model": ["a", "b"], "task": ["sst2", "sst2"], "group": ["clean", "clean"],
        "mean_acc": [0.5, 0.75], "std_acc": [0.1, 0.05], "role": ["cit", "coin"],
    })
    return report.category_comparison(ours, "tiny")


def test_save_figure_writes_png_pdf_and_csv(tmp_path):
    data = pd.DataFrame({"x": [1, 2], "y": [0.25, 0.5]})
    fig, ax = plt.subplots()
    ax.plot(data["x"], data["y"])
    paths = figures.save_figure(fig, data, tmp_path / "out", "fig9_example")
    assert [p.name for p in paths] == ["fig9_example.png", "fig9_example.pdf", "fig9_example.csv"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    pd.testing.assert_frame_equal(pd.read_csv(paths[2]), data)
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_task_category_bars_show_accuracy_and_std():
    fig = figures.plot_task_categories(_comparison())
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["paper: Alpaca-7B", "ours: tiny"]
    heights = sorted(round(p.get_height(), 6) for p in axes[1].patches)
    assert heights == [50.0, 75.0]  # CIT and COIN bars of ours, in percent
    assert sorted(round(p.get_height(), 6) for p in axes[0].patches) == [90.1, 91.4]


def test_lambda_figure_has_a_line_per_group_and_source():
    ours = pd.DataFrame({
        "model": ["m"] * 2, "task": ["sst2"] * 2, "group": ["clean", "checklist"],
        "mean_acc": [0.6, 0.5], "std_acc": [0.1, 0.2], "lambda": [1000.0] * 2,
    })
    fig = figures.plot_lambda_ablation(report.lambda_comparison(ours, "m"))
    assert len(fig.axes) == 4  # (paper, ours) x (accuracy, std)
    labels = [line.get_label() for line in fig.axes[2].lines]
    assert labels == ["clean", "sentence (CheckList)", "average"]
    clean = fig.axes[2].lines[0]
    assert clean.get_xdata().tolist() == [1000.0] and clean.get_ydata().tolist() == pytest.approx([60.0])


def test_umap_figure_one_panel_per_role():
    pts = pd.DataFrame({
        "role": ["cit"] * 4 + ["coin"] * 4, "run": ["r1"] * 4 + ["r2"] * 4,
        "group": ["clean", "semantic"] * 4, "umap_x": np.arange(8.0), "umap_y": np.arange(8.0),
    })
    fig = figures.plot_umap(pts, "tiny")
    assert [ax.get_title() for ax in fig.axes] == ["CIT (run 'r1')", "COIN (run 'r2')"]
    assert "tiny" in fig._suptitle.get_text()
    assert [len(c.get_offsets()) for c in fig.axes[0].collections] == [2, 2]


def test_paired_difference_points_sit_at_the_estimates_in_points():
    paired = pd.DataFrame({
        "group": ["clean", "average"], "model_a": "coin", "model_b": "cit", "acc_diff": [0.02, -0.01],
        "acc_diff_low": [0.0, -0.03], "acc_diff_high": [0.05, 0.01], "instr_std_diff": [-0.04, 0.0],
        "instr_std_diff_low": [-0.06, -0.02], "instr_std_diff_high": [-0.01, 0.02], "n_tasks": 2, "n_instances": 40,
    })
    fig = figures.plot_paired_difference(paired)
    acc, std = fig.axes
    assert [t.get_text() for t in acc.get_yticklabels()] == ["clean", "average"]
    points = [line.get_xdata()[0] for line in acc.lines if line.get_marker() == "o"]
    assert points == pytest.approx([2.0, -1.0])
    assert [line.get_xdata()[0] for line in std.lines if line.get_marker() == "o"] == pytest.approx([-4.0, 0.0])
    assert fig._suptitle.get_text().startswith("coin − cit") and acc.get_xlabel() == "Δ accuracy (points)"
