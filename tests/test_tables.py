"""Tables of the analyses: the paper's stored numbers, aggregation rules (checked against the paper), inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coinlib.core.params import validate
from coinlib.core.paper_numbers import PAPER_LAMBDAS, paper_tables
from coinlib.results import tables as report
from coinlib.results.inputs import MissingInput, lambda_runs

GLUE = ["cola", "mnli", "mnli_matched", "mnli_mismatched", "mrpc", "qnli", "qqp", "rte", "sst2", "wnli"]
GROUPS = ["clean", "deepwordbug", "textfooler", "checklist", "semantic"]


def _glue(table: int) -> pd.DataFrame:
    rows = paper_tables(table)
    return rows[rows["task"] != "average"]


# ------------------------------------------------------------------------------------------ reference data
def test_reference_tables_are_complete():
    t3, t4 = paper_tables(3), paper_tables(4)
    assert len(t3) == 3 * 5 * 11 and set(t3["model"]) == {"base", "cit", "coin"}
    assert len(t4) == 6 * 5 * 11 and tuple(sorted(set(t4["lambda"]))) == PAPER_LAMBDAS
    assert set(t3["task"]) == set(GLUE) | {"average"} and set(t3["group"]) == set(GROUPS)
    assert paper_tables(1)["mean_acc"].between(0, 1).all()
    with pytest.raises(ValueError, match="no paper table 2"):
        paper_tables(2)


def test_table3_coin_is_table4_lambda_1000():
    coin = paper_tables(3).query("model == 'coin'").set_index(["group", "task"])[["mean_acc", "std_acc"]]
    lam = paper_tables(4).query("`lambda` == 1000").set_index(["group", "task"])[["mean_acc", "std_acc"]]
    pd.testing.assert_frame_equal(coin.sort_index(), lam.sort_index())


def test_table1_is_recomputed_from_table3():
    t3 = _glue(3)
    cats = report.task_categories(t3[t3["model"] != "base"], by=["model"]).set_index(["model", "category"])
    published = paper_tables(1).set_index(["model", "task"])
    for (model, cat), row in published.iterrows():
        got = cats.loc[(model, cat)]
        assert abs(got["mean_acc"] - row["mean_acc"]) <= 0.0006, (model, cat)  # rounding of the printed numbers
        assert abs(got["mean_task_std"] - row["std_acc"]) <= 0.0007, (model, cat)
    assert (cats["n_groups"] == 5).all()
    assert cats.loc[("cit", "nli"), "tasks"] == "mnli mnli_matched mnli_mismatched qnli rte wnli"


@pytest.mark.parametrize("table,key", [(3, "model"), (4, "lambda")])
def test_average_column_is_recomputed(table, key):
    got = report.average_over_tasks(_glue(table), by=[key, "group"])
    ref = paper_tables(table).query("task == 'average'")
    both = got.merge(ref, on=[key, "group"], suffixes=("", "_paper"))
    assert len(both) == len(ref) and (both["n_tasks"] == 10).all()
    assert (both["mean_acc"] - both["mean_acc_paper"]).abs().max() <= 0.0008
    assert (both["std_acc"] - both["std_acc_paper"]).abs().max() <= 0.0008


# ------------------------------------------------------------------------------------------ aggregation
def test_pooled_std_is_std_of_all_values():
    rng = np.random.default_rng(0)
    samples = rng.uniform(0, 1, size=(4, 6))  # 4 tasks x 6 instructions
    got = report.pooled_std(samples.mean(axis=1), samples.std(axis=1))
    assert got == pytest.approx(samples.std())


def _summary(rows):
    return pd.DataFrame(rows, columns=["model", "task", "group", "mean_acc", "std_acc"])


def test_task_categories_known_answer():
    s = _summary([
        ("m", "sst2", "clean", 0.9, 0.02), ("m", "sst2", "checklist", 0.7, 0.04),
        ("m", "qqp", "clean", 0.6, 0.10), ("m", "mrpc", "clean", 0.4, 0.20),
        ("m", "mnli_matched", "clean", 0.5, 0.0), ("m", "stsb", "clean", 0.1, 0.0),
    ])
    got = report.task_categories(s).set_index("category")
    assert list(got.index) == ["sentiment", "paraphrase", "nli"]  # Table 1 order; stsb has no category
    assert got.loc["sentiment", ["mean_acc", "mean_task_std"]].tolist() == pytest.approx([0.8, 0.03])
    assert got.loc["paraphrase", ["mean_acc", "mean_task_std"]].tolist() == pytest.approx([0.5, 0.15])
    assert got.loc["sentiment", "n_groups"] == 2 and got.loc["paraphrase", "tasks"] == "mrpc qqp"


def test_category_comparison_matches_paper_to_our_coverage_and_adds_delta():
    ours = _summary([("r1", "sst2", "clean", 0.50, 0.10), ("r2", "sst2", "clean", 0.75, 0.05)])
    ours["role"] = ["cit", "coin"]
    comp = report.category_comparison(ours, "tiny-model").set_index(["source", "role"])
    # paper restricted to SST-2 / clean: Table 3's CIT 90.1 ± 2.4 and COIN 91.4 ± 0.7
    cols = ["mean_acc", "mean_task_std"]
    assert comp.loc[("paper", "cit"), cols].tolist() == pytest.approx([0.901, 0.024])
    assert comp.loc[("paper", "coin - cit"), cols].tolist() == pytest.approx([0.013, -0.017])
    assert comp.loc[("ours", "coin - cit"), cols].tolist() == pytest.approx([0.25, -0.05])
    assert set(comp["model"]) == {"Alpaca-7B", "tiny-model"}
    with pytest.raises(ValueError, match=r"none of the evaluated tasks \(boolq\)"):
        report.category_comparison(ours.assign(task="boolq"), "tiny-model")
    table = report.category_table(comp.reset_index())
    assert table.loc[0, "ours tiny-model: CIT"] == "50.0 ± 10.0"
    assert table.loc[0, "ours tiny-model: Δ (COIN − CIT)"] == "+25.0 / -5.0"


def test_lambda_comparison_pools_tasks_then_groups():
    ours = _summary([
        ("a", "sst2", "clean", 0.8, 0.1), ("a", "rte", "clean", 0.6, 0.1),
        ("a", "sst2", "checklist", 0.6, 0.0), ("a", "rte", "checklist", 0.4, 0.0),
    ]).assign(**{"lambda": 10.0})
    comp = report.lambda_comparison(ours, "tiny")
    mine = comp[comp["source"] == "ours"].set_index("group")
    assert mine.loc["clean", ["mean_acc", "std_acc"]].tolist() == pytest.approx([0.7, np.sqrt(0.01 + 0.01)])
    assert mine.loc["checklist", ["mean_acc", "std_acc"]].tolist() == pytest.approx([0.5, 0.1])
    all_vals = np.array([0.7, 0.9, 0.5, 0.7, 0.6, 0.6, 0.4, 0.4])  # per-instruction values consistent with the rows
    assert mine.loc["average", ["mean_acc", "std_acc"]].tolist() == pytest.approx([all_vals.mean(), all_vals.std()])
    paper = comp[comp["source"] == "paper"]
    assert set(paper["lambda"]) == set(PAPER_LAMBDAS) and set(paper["n_tasks"]) == {2}
    best = report.best_lambda(comp).set_index("source")
    assert best.loc["ours", "lambda"] == 10.0 and best.loc["paper", "lambda"] in PAPER_LAMBDAS
    wide = report.lambda_table(comp)
    assert list(wide.columns) == ["lambda", "group", "paper Alpaca-7B", "ours tiny"]
    assert wide.set_index(["lambda", "group"]).loc[("10", "clean"), "ours tiny"] == "70.0 ± 14.1"


def test_paper_best_lambda_is_1000():
    comp = report.lambda_comparison(_glue(4).query("model == 'coin'").assign(model="paper-as-ours"), "x")
    assert report.best_lambda(comp).set_index("source")["lambda"].to_dict() == {"paper": 1000.0, "ours": 1000.0}


def test_to_markdown_escapes_pipes():
    md = report.to_markdown(pd.DataFrame({"a": ["x|y"], "b": [1.5]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.5 |"]


# ------------------------------------------------------------------------------------------ inputs
def _params(tmp_path, **analysis):
    return validate({"base": "smoke.yaml", "run": {"name": "main", "output_root": str(tmp_path)},
                     "analysis": analysis})


def _write_summary(path, model):
    path.parent.mkdir(parents=True, exist_ok=True)
    _summary([(model, "sst2", "clean", 0.5, 0.1)]).to_csv(path, index=False)


def test_missing_summary_names_the_notebook_to_run(tmp_path):
    P = _params(tmp_path, cit_run="cit", coin_run="coin")
    with pytest.raises(MissingInput, match=r"03_evaluate\.ipynb") as info:
        report.ours_by_role(P)
    assert info.value._render_traceback_() == [f"MissingInput: {info.value}"]


def test_missing_adapter_and_evaluation_names_training(tmp_path):
    P = _params(tmp_path, cit_run="cit", coin_run="coin")
    _write_summary(tmp_path / "main" / "eval" / "summary.csv", "cit")
    with pytest.raises(MissingInput, match=r"run 'coin'.*02_train\.ipynb.*03_evaluate"):
        report.ours_by_role(P)


def test_predictions_must_exist_and_hold_the_compared_models(tmp_path):
    from coinlib.results.inputs import load_predictions

    P = _params(tmp_path)
    with pytest.raises(MissingInput, match=r"no predictions for run 'main'.*03_evaluate"):
        load_predictions(P, ["cit"])
    path = tmp_path / "main" / "eval" / "predictions.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"model": ["base", "cit"], "correct": [True, False]}).to_parquet(path)
    assert len(load_predictions(P, ["cit", "base"])) == 2
    with pytest.raises(MissingInput, match=r"no predictions of \['coin'\]"):
        load_predictions(P, ["cit", "coin"])


def test_roles_must_be_set(tmp_path):
    P = _params(tmp_path, cit_run=None, coin_run="coin")
    with pytest.raises(MissingInput, match="analysis.cit_run not set"):
        report.ours_by_role(P)


def test_lambda_rows_fall_back_to_the_runs_own_summary(tmp_path):
    P = _params(tmp_path, lambda_runs={"10": "lam10", "1000": "main"})
    _write_summary(tmp_path / "main" / "eval" / "summary.csv", "main")
    _write_summary(tmp_path / "lam10" / "eval" / "summary.csv", "lam10")
    rows = report.ours_by_lambda(P)
    assert rows.set_index("lambda")["model"].to_dict() == {10.0: "lam10", 1000.0: "main"}


def test_lambda_mapping_is_checked_against_the_runs_params(tmp_path):
    P = _params(tmp_path, lambda_runs={"10": "lam"})
    (tmp_path / "lam").mkdir()
    (tmp_path / "lam" / "params.yaml").write_text("train:\n  lambda: 100\n")
    with pytest.raises(ValueError, match="records train.lambda 100"):
        lambda_runs(P)


def test_study_across_table_shows_the_seed_test_in_points():
    from coinlib.results.tables import study_across_table, study_markdown

    # differences 0.01, 0.03, 0.05 (SD 0.02) with bootstrap SE 0.01: t-interval 0.03 -+ 0.049683, MDD 0.081926
    across = pd.DataFrame([dict(format="train", arm="coin", reference="cit", group="average", metric="cal_acc",
                                seeds="0 1 2", n_seeds=3, mean_a=0.83, mean_b=0.80, mean_diff=0.03, sd_diff=0.02,
                                n_positive=3, t=2.598, p_t=0.1217, ci_low=-0.019683, ci_high=0.079683, p_perm=0.25,
                                se_inst=0.01, se_total=0.015275, mdd=0.081926)])
    per_seed = pd.DataFrame({"format": "train", "arm": "coin", "reference": "cit", "group": "average",
                             "metric": "cal_acc", "seed": [2, 0, 1], "a": 0.8, "b": 0.8, "diff": [0.05, 0.01, 0.03],
                             "diff_low": 0.0, "diff_high": 0.1, "se": 0.01})
    row = study_across_table(across, per_seed).iloc[0]
    assert row["metric"] == "calibrated accuracy" and (row["reference"], row["arm"]) == ("80.0", "83.0")
    assert row["Δ [95% t-interval]"] == "+3.0 [-2.0, +8.0]" and row["Δ per seed"] == "+1.0 +3.0 +5.0"
    assert (row["p (t)"], row["p (sign-flip)"], row["MDD"]) == ("0.12", "0.25", "8.2")
    # (1.96 + 0.84) x 0.01 = 0.028 > 0.02 however many seeds: the instance sample limits the design
    assert row["seeds for MDD 2"] == "> 100"
    # SE 0.001: n = 10 gives (2.262 + 0.883) x sqrt(0.0004 / 10 + 1e-6) = 0.0201, n = 11 gives 0.0190
    assert study_across_table(across.assign(se_inst=0.001), per_seed).iloc[0]["seeds for MDD 2"] == "11"
    runs = pd.DataFrame({"run": ["cit-s0"], "arm": ["cit"], "seed": [0], "format": ["train"], "status": ["done"],
                         "steps": [80], "train_s": [600.0], "eval_s": [300.0], "cal_acc": [0.8]})
    text = study_markdown(runs, per_seed, across, {"cit": "CIT", "coin": "COIN"})
    assert "| cit-s0 | CIT | 0 | train | done | 80 | 10.0 | 5.0 |" in text and "COIN − CIT, train format" in text
