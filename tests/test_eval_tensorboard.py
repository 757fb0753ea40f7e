"""Evaluation summaries reach the run's TensorBoard log, beside the training curves."""

from __future__ import annotations

import pandas as pd
import pytest

from coinlib.core.params import validate
from coinlib.evaluate.metrics import SUMMARY_COLUMNS
from coinlib.evaluate.runner import run_evaluation


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _params(tiny_dir, out, **train):
    return validate({"base": "smoke.yaml", "run": {"name": "tb", "output_root": str(out)},
                     "model": {"name": str(tiny_dir)}, "train": train,
                     "evaluate": dict(tasks=["sst2"], n_per_task=3, groups=["clean", "checklist"], n_instructions=2,
                                      scoring="rank", batch_size=2, adapters=[])})


def test_every_summary_metric_is_a_scalar_at_the_runs_last_training_step(tiny_dir, tmp_path, mirror):
    P = _params(tiny_dir, tmp_path)
    P.run_dir.mkdir(parents=True)
    pd.DataFrame({"step": [1, 2, 7], "loss": [3.0, 2.0, 1.0]}).to_csv(P.run_dir / "train_log.csv", index=False)
    summary = run_evaluation(P, rank=0, world_size=1).summary
    scalars = _scalars(P.run_dir / "tensorboard")
    expected = {}
    for row in summary.to_dict("records"):
        for metric in SUMMARY_COLUMNS[5:]:  # every metric; NaN ones (the clean group's flip rates) are left out
            if pd.notna(row[metric]):
                expected[f"eval/base/sst2/{row['group']}/{metric}"] = [(7, pytest.approx(row[metric], abs=1e-6))]
    assert scalars == expected
    assert {"eval/base/sst2/checklist/flip_rate", "eval/base/sst2/clean/mean_acc"} <= set(scalars)


def test_no_tensorboard_log_unless_report_to_names_it(tiny_dir, tmp_path, mirror):
    P = _params(tiny_dir, tmp_path, report_to=[])
    run_evaluation(P, rank=0, world_size=1)
    assert (P.run_dir / "eval" / "summary.csv").is_file() and not (P.run_dir / "tensorboard").exists()
