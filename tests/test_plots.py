"""Figures (coinlib.results.plots): each draws the numbers of its table and is saved with the CSV behind it."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from coinlib.results import plots as figures
from coinlib.results import tables as report
from coinlib.results.plots import (
    ROLE_COLORS,
    figure3_data,
    plot_figure3,
    read_log,
    save_training_curves,
)


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
        "acc_diff_low": [0.0, -0.03], "acc_diff_high": [0.05, 0.01], "std_diff": [-0.04, 0.0],
        "std_diff_low": [-0.06, -0.02], "std_diff_high": [-0.01, 0.02], "n_tasks": 2, "n_instances": 40,
    })
    fig = figures.plot_paired_difference(paired)
    acc, std = fig.axes
    assert [t.get_text() for t in acc.get_yticklabels()] == ["clean", "average"]
    points = [line.get_xdata()[0] for line in acc.lines if line.get_marker() == "o"]
    assert points == pytest.approx([2.0, -1.0])
    assert [line.get_xdata()[0] for line in std.lines if line.get_marker() == "o"] == pytest.approx([-4.0, 0.0])
    assert fig._suptitle.get_text().startswith("coin − cit") and acc.get_xlabel() == "Δ accuracy (points)"


# Figure 3

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


def test_figure3_std_is_pooled_over_tasks():
    """Figure 3's std is Table 3's "Average": the std of all instructions' accuracies pooled over tasks, which
    differs from the mean of the per-task stds when task means differ."""
    per_instruction = {"sst2": [0.5, 0.7], "rte": [0.2, 0.2], "cola": [0.9, 0.6]}  # accuracy per instruction
    summary = pd.DataFrame([("m", t, "clean", np.mean(a), np.std(a)) for t, a in per_instruction.items()],
                           columns=["model", "task", "group", "mean_acc", "std_acc"])
    pooled = 100 * np.std(np.concatenate(list(per_instruction.values())))  # 25.44: one std over all 6 values
    mean_of_stds = 100 * np.mean([np.std(a) for a in per_instruction.values()])  # 8.33
    assert abs(pooled - mean_of_stds) > 10
    acc, std = plot_figure3(figure3_data(summary)).axes
    assert [p.get_height() for p in acc.patches] == pytest.approx([100 * np.mean([0.5, 0.7, 0.2, 0.2, 0.9, 0.6])])
    assert [p.get_height() for p in std.patches] == pytest.approx([pooled])


def test_figure3_std_is_the_pooled_std_of_the_tables():
    """Tasks with different accuracies: the pooled std (population std of all per-instruction accuracies) differs
    from the mean of per-task stds, and Figure 3 shows the pooled one, as the tables (results.md) do."""
    # sst2: instructions at 0.9 and 0.7 (mean 0.8, std 0.1); rte: 0.5 and 0.3 (mean 0.4, std 0.1)
    summary = pd.DataFrame({"model": "m", "task": ["sst2", "rte"], "group": "clean", "mean_acc": [0.8, 0.4],
                            "std_acc": [0.1, 0.1]})
    row = figure3_data(summary).iloc[0]
    assert row["mean_acc"] == pytest.approx(0.6)
    assert row["std_acc"] == pytest.approx(np.std([0.9, 0.7, 0.5, 0.3]))  # 0.2236, not the mean of stds 0.1
    from coinlib.results.report import group_table

    cell = group_table(summary.assign(model="base"), {"base": "base"}, "m").set_index("group").iloc[0, -1]
    assert cell == f"60.0 ± {100 * np.std([0.9, 0.7, 0.5, 0.3]):.1f}"


def test_figure3_without_roles_keeps_the_summary_order():
    fig = plot_figure3(figure3_data(_summary()))
    assert fig.axes[1].get_legend_handles_labels()[1] == ["run-coin", "base", "run-cit"]
    plt.close(fig)


def _label_free_summary() -> pd.DataFrame:
    nan = math.nan
    rows = [  # model, task, group, auc, cal_acc, flip_rate, flip_rate_cal
        ("cit", "sst2", "clean", 0.70, 0.60, nan, nan), ("cit", "rte", "clean", 0.50, 0.50, nan, nan),
        ("cit", "sst2", "checklist", 0.60, 0.55, 0.10, 0.30), ("cit", "rte", "checklist", nan, 0.45, 0.20, 0.10),
        ("coin", "sst2", "clean", 0.80, 0.70, nan, nan), ("coin", "rte", "clean", 0.60, 0.50, nan, nan),
        ("coin", "sst2", "checklist", 0.90, 0.75, 0.00, 0.20), ("coin", "rte", "checklist", 0.70, 0.65, 0.10, 0.00),
    ]
    frame = pd.DataFrame(rows, columns=["model", "task", "group", "auc", "cal_acc", "flip_rate", "flip_rate_cal"])
    return frame.assign(margin_sd=0.5, posix=0.1)


def test_label_free_companion_averages_over_tasks():
    data = figures.figure3_label_free_data(_label_free_summary()).set_index(["model", "group"])
    assert data.loc[("cit", "clean"), "auc"] == pytest.approx(0.60)
    assert data.loc[("cit", "checklist"), "auc"] == pytest.approx(0.60)  # rte undefined: the mean of sst2 alone
    assert data.loc[("coin", "checklist"), "flip_rate_cal"] == pytest.approx(0.10)
    assert math.isnan(data.loc[("coin", "clean"), "flip_rate"]) and (data["n_tasks"] == 2).all()
    with pytest.raises(ValueError, match="--merge"):
        figures.figure3_label_free_data(_summary())  # an old summary without the label-free columns


def test_label_free_companion_bars():
    data = figures.figure3_label_free_data(_label_free_summary())
    fig = figures.plot_figure3_label_free(data, {"cit": "cit", "coin": "coin"})
    auc, cal, flip, flip_cal = fig.axes
    assert auc.get_title().startswith("ROC AUC") and flip_cal.get_title().startswith("flip rate vs clean, calibrated")
    # bars per model (CIT then COIN), per group (clean, checklist), in %
    assert [round(p.get_height(), 6) for p in auc.patches] == pytest.approx([60, 60, 70, 80])
    assert [round(p.get_height(), 6) for p in cal.patches] == pytest.approx([55, 50, 60, 70])
    heights = [p.get_height() for p in flip.patches]
    assert math.isnan(heights[0]) and heights[1] == pytest.approx(15) and heights[3] == pytest.approx(5)
    assert auc.lines[0].get_ydata()[0] == 50  # chance AUC
    assert [t.get_text() for t in cal.get_legend().get_texts()] == ["cit", "coin"]
    assert [to_hex(p.get_facecolor()) for p in auc.patches[::2]] == [ROLE_COLORS["cit"], ROLE_COLORS["coin"]]
    plt.close(fig)


# Training curves

def _log(contrastive: bool) -> pd.DataFrame:
    nan = math.nan
    return pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.5], "loss_ent": [2.0, 1.8],
                         "loss_ctr": [0.5, 0.4] if contrastive else [nan, nan],
                         "weight": [4.0, 4.5] if contrastive else [nan, nan],
                         "cos_pos": [0.9, 0.95] if contrastive else [nan, nan],
                         "cos_neg": [0.8, 0.7] if contrastive else [nan, nan]})


@pytest.mark.parametrize("contrastive", [True, False])
def test_curves_saved_with_their_data(tmp_path, contrastive):
    run = tmp_path / "run"
    run.mkdir()
    _log(contrastive).to_csv(run / "train_log.csv", index=False)
    paths = save_training_curves(run, tmp_path / "fig", "t")
    assert sorted(p.suffix for p in paths) == [".csv", ".pdf", ".png"]
    assert pd.read_csv(tmp_path / "fig" / "training_curves.csv")["loss_ent"].tolist() == [2.0, 1.8]


def test_missing_log_names_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train the run first"):
        read_log(tmp_path)


def test_figure3_command_draws_a_summary_csv(tmp_path, capsys):
    _summary().to_csv(tmp_path / "summary.csv", index=False)
    assert figures.main(["figure3", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "fig"),
                         "--roles", "run-coin=coin"]) == 0
    assert {p.name for p in (tmp_path / "fig").iterdir()} == {f"fig3_robustness.{e}" for e in ("png", "pdf", "csv")}
    drawn = pd.read_csv(tmp_path / "fig" / "fig3_robustness.csv")
    assert drawn.loc[drawn["model"] == "base", "mean_acc"].tolist() == pytest.approx([0.5, 0.5])
    assert figures.main(["figure3", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "fig")]) == 2
    assert "nope.csv not found" in capsys.readouterr().err
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "other.csv", index=False)
    assert figures.main(["figure3", str(tmp_path / "other.csv"), "--out", str(tmp_path / "fig")]) == 2
    assert "not an evaluation summary" in capsys.readouterr().err


def test_seed_differences_draws_each_seed_and_the_mean_with_its_interval():
    per_seed = pd.DataFrame({"format": "train", "arm": "coin", "reference": "cit", "group": ["clean"] * 3,
                             "metric": "cal_acc", "seed": [0, 1, 2], "diff": [0.01, 0.03, 0.05]})
    across = pd.DataFrame({"format": ["train"], "arm": ["coin"], "reference": ["cit"], "group": ["clean"],
                           "metric": ["cal_acc"], "mean_diff": [0.03], "ci_low": [-0.02], "ci_high": [0.08],
                           "mdd": [0.06]})
    fig = figures.plot_seed_differences(per_seed, across, {"coin": "COIN", "cit": "CIT"}, metrics=("cal_acc",))
    ax = fig.axes[0]
    seeds = [c for c in ax.collections if c.get_offsets().shape[0] == 3][0]
    assert sorted(seeds.get_offsets()[:, 0]) == pytest.approx([1, 3, 5])  # points, in percentage points
    mean_line = [ln for ln in ax.lines if len(ln.get_xdata()) == 1 and ln.get_marker() == "o"][0]
    assert mean_line.get_xdata()[0] == pytest.approx(3)
    bar = [c for c in ax.collections if type(c).__name__ == "LineCollection"][0].get_segments()[0]
    assert sorted(bar[:, 0]) == pytest.approx([-2, 8])  # the t-interval
    band = [c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")][0]
    xs = band.get_paths()[0].vertices[:, 0]
    assert (xs.min(), xs.max()) == pytest.approx((-6, 6))  # +- the minimum detectable difference
    assert "CIT" in fig._suptitle.get_text()


# ---------------------------------------------------------------------------------------------- intervals, instructions
def test_figure3_accuracy_bars_carry_the_summary_intervals():
    """One task: the bar's error bar is the summary's bootstrap interval; two tasks: half-widths in quadrature."""
    one = pd.DataFrame({"model": ["a", "b"], "task": "sst2", "group": "clean", "mean_acc": [0.6, 0.5],
                        "std_acc": 0.1, "ci_low": [0.5, 0.45], "ci_high": [0.65, 0.6]})
    acc, std = plot_figure3(figure3_data(one)).axes
    bars = [c for c in acc.containers if getattr(c, "errorbar", None) is not None]
    segments = [c.errorbar.lines[2][0].get_segments()[0] for c in bars]
    assert [sorted(s[:, 1]) for s in segments] == [pytest.approx([50, 65]), pytest.approx([45, 60])]
    assert "95% interval" in acc.get_title() and not [c for c in std.containers if getattr(c, "errorbar", None)]
    two = pd.DataFrame({"model": "a", "task": ["sst2", "rte"], "group": "clean", "mean_acc": [0.6, 0.4],
                        "std_acc": 0.1, "ci_low": [0.5, 0.37], "ci_high": [0.64, 0.43]})
    row = figure3_data(two).iloc[0]
    assert row["ci_low"] == pytest.approx(0.5 - np.hypot(0.1, 0.03) / 2)
    assert row["ci_high"] == pytest.approx(0.5 + np.hypot(0.04, 0.03) / 2)
    assert figure3_data(two.drop(columns=["ci_low", "ci_high"]))[["ci_low", "ci_high"]].isna().all().all()


def _predictions() -> pd.DataFrame:
    """2 models x 2 tasks x 2 groups x 3 instructions x 4 instances with known accuracies."""
    rng = np.random.default_rng(0)
    rows = []
    for m in ("run-cit", "run-coin"):
        for t in ("sst2", "rte"):
            for g in ("clean", "checklist"):
                for i in range(3):
                    hits = rng.integers(0, 5)  # instances answered correctly, 0..4
                    rows += [dict(model=m, task=t, group=g, instruction_id=i, instruction=f"{g} {i}",
                                  instance_id=str(j), correct=j < hits) for j in range(4)]
    return pd.DataFrame(rows)


def test_instruction_figure_draws_every_instruction_and_their_mean(tmp_path, capsys):
    predictions = _predictions()
    data = figures.instruction_data(predictions)
    assert len(data) == 2 * 2 * 2 * 3 and list(dict.fromkeys(data["group"])) == ["clean", "checklist"]
    fig = figures.plot_instruction_accuracy(data, {"run-cit": "cit", "run-coin": "coin"})
    assert [ax.get_title() for ax in fig.axes] == ["rte", "sst2"]
    for ax, task in zip(fig.axes, ("rte", "sst2")):
        points = {to_hex(c.get_facecolor()[0]): sorted(c.get_offsets()[:, 1]) for c in ax.collections
                  if type(c).__name__ == "PathCollection"}
        means = sorted(y for c in ax.collections if type(c).__name__ == "LineCollection"
                       for y in (s[0, 1] for s in c.get_segments()))
        acc = predictions[predictions["task"] == task].groupby(["model", "group", "instruction_id"])["correct"].mean()
        for model, role in (("run-cit", "cit"), ("run-coin", "coin")):
            assert points[ROLE_COLORS[role]] == pytest.approx(sorted(100 * acc.loc[model]))
        assert means == pytest.approx(sorted(100 * acc.groupby(["model", "group"]).mean()))
    predictions.to_parquet(tmp_path / "predictions.parquet")
    assert figures.main(["instructions", str(tmp_path / "predictions.parquet"), "--out", str(tmp_path / "fig")]) == 0
    drawn = pd.read_csv(tmp_path / "fig" / "fig3_instructions.csv")
    assert len(drawn) == 24 and drawn["instruction"].iloc[0] == "clean 0"
    assert figures.main(["instructions", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "fig")]) == 2
    assert "not found" in capsys.readouterr().err


def test_table2_share_compares_the_paper_mix_with_a_build():
    counts = pd.DataFrame({"dataset": ["a", "b", "c"], "paper_count": [3, 1, 0], "entries": [2, 2, 0]})
    share = figures.table2_share_data(counts)
    assert share.columns.tolist() == ["dataset", "paper", "ours"]
    assert share["paper"].tolist() == [0.75, 0.25, 0.0] and share["ours"].tolist() == [0.5, 0.5, 0.0]
    fig = figures.plot_table2_share(share)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["c", "b", "a"]
    empty = figures.table2_share_data(counts.assign(entries=0))  # nothing built: shares 0, not NaN
    assert empty["ours"].tolist() == [0.0, 0.0, 0.0]


def test_metric_curves_average_seeds_only_at_steps_every_seed_has():
    rows = [("base", None, 0, 0.60), ("cit", 0, 20, 0.70), ("cit", 0, 80, 0.90), ("cit", 1, 80, 0.80)]
    points = pd.DataFrame([dict(arm=a, seed=s, step=t, auc=v, cal_acc=v, flip_rate_cal=1 - v, margin_rank=v)
                           for a, s, t, v in rows])
    fig = figures.plot_metric_curves(points, {"cit": "CIT"})
    mean = next(line for line in fig.axes[0].get_lines() if line.get_label() == "CIT")
    # seed 0's step 20 is drawn thin, not averaged with nothing: the mean runs base -> the mean of both seeds at 80
    assert list(mean.get_xdata()) == [0, 80] and list(mean.get_ydata()) == pytest.approx([60.0, 85.0])
    thin = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("_")]
    assert sorted(len(line.get_xdata()) for line in thin) == [2, 3]
