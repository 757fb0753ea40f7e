"""RESULTS.md tables from a run's evaluation outputs: hand-made predictions with known numbers."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from coinlib.core.params import validate
from coinlib.evaluate.metrics import summarize
from coinlib.results import report as results
from coinlib.results.inputs import MissingInput


def _params(tmp_path):
    return validate({"base": "smoke.yaml", "run": {"name": "main", "output_root": str(tmp_path),
                                                   "figures_root": str(tmp_path / "figures")},
                     "analysis": {"cit_run": "cit", "coin_run": "coin", "lambda_runs": {}}})


def _predictions() -> pd.DataFrame:
    """sst2, 2 groups x 2 instructions x 4 instances: base right on 1 of 4, CIT on 2, COIN on 3 (every
    instruction); COIN's wrong answers (instance 3) under the clean group are unparseable."""
    rows = []
    for model, n_right in (("base", 1), ("cit", 2), ("coin", 3)):
        for group, instr, inst in itertools.product(("clean", "checklist"), range(2), range(4)):
            correct = inst < n_right
            pred = "positive" if correct else ("" if model == "coin" and group == "clean" else "negative")
            rows.append(dict(model=model, adapter="", task="sst2", group=group, instruction_id=instr,
                             instruction=f"i{instr}", instance_id=inst, gold="positive", prediction=pred,
                             correct=correct, raw_output=pred, label_scores="{}"))
    return pd.DataFrame(rows)


def _write_run(tmp_path) -> pd.DataFrame:
    preds = _predictions()
    out = tmp_path / "main" / "eval"
    out.mkdir(parents=True)
    preds.to_parquet(out / "predictions.parquet")
    summarize(preds, n_boot=50).to_csv(out / "summary.csv", index=False)
    return preds


def test_sections_hold_the_known_numbers(tmp_path):
    _write_run(tmp_path)
    sections = results.build(_params(tmp_path), n_boot=200)
    assert list(sections) == ["groups", "paired", "tasks", "answers"]  # no lambda runs mapped
    groups = sections["groups"].set_index("group")
    assert list(groups.index) == ["clean", "checklist", "average"]  # the paper's group order
    assert groups.loc["average", "ours smollm2-135m-instruct: Base"] == "25.0 ± 0.0"
    assert groups.loc["clean", "ours smollm2-135m-instruct: COIN"] == "75.0 ± 0.0"
    assert groups.loc["clean", "paper Alpaca-7B: COIN"] == "91.4 ± 0.7"  # Table 3, SST-2 only (our coverage)
    paired = sections["paired"]
    assert list(dict.fromkeys(paired["comparison"])) == ["COIN - CIT", "CIT - base", "COIN - base"]
    first = paired.iloc[0]
    # instances 0-1 are right and 3 wrong for both: a resample may hold no instance where they differ
    assert first["Δ accuracy [95% CI]"].startswith("+25.0 [+0.0, ") and 0.5 < float(first["P(better)"]) < 1
    assert sections["tasks"].set_index("task").loc["sst2", "ours: CIT"] == "50.0 ± 0.0"
    answers = sections["answers"].set_index("model")
    assert answers.loc["coin", "unparseable"] == pytest.approx(100 * 2 / 16)  # instance 3 x 2 clean instructions
    assert answers.loc["cit", "unparseable"] == 0 and answers.loc["base", "accuracy"] == 25.0


def test_cli_writes_results_markdown_and_names_missing_inputs(tmp_path, capsys):
    P = _params(tmp_path)
    path = tmp_path / "p.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"base": "smoke.yaml", "run": {"name": "main", "output_root": str(tmp_path),
                                                                   "figures_root": str(tmp_path / "figures")},
                                    "analysis": {"cit_run": "cit", "coin_run": "coin", "lambda_runs": {}}}))
    assert results.main([str(path)]) == 2
    assert "03_evaluate" in capsys.readouterr().err
    _write_run(tmp_path)
    assert results.main([str(path), "--n-boot", "50"]) == 0
    text = (P.figures_dir / "results.md").read_text()
    assert text.startswith("### groups") and "### paired" in text and "COIN - CIT" in text
    with pytest.raises(MissingInput):
        results.build(validate({"base": "smoke.yaml", "run": {"name": "other", "output_root": str(tmp_path)}}))
