"""Part-way stops of study runs: snapshot evaluations at fractions of training and the training gate."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_study import _recipe, _write_spec

from coinlib.study import checkpoints, driver, store
from coinlib.study import spec as study_spec


def _tiny_recipe(tmp_path, tiny_dir, **train):
    return _recipe(tmp_path, model={"name": str(tiny_dir)}, data={"size": 16},
                   train={"max_steps": 4, "batch_size": 2, "micro_batch_pairs": 2, "save_steps": 10,
                          "save_total_limit": 1, "logging_steps": 1, "cutoff_len": 64, **train},
                   evaluate={"n_per_task": 4, "groups": ["clean"], "n_instructions": 1, "batch_size": 4})


def _weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_part_way_evaluations_pause_training_and_leave_the_adapter_unchanged(tmp_path, tiny_dir, mirror):
    """Stops at 1/4, 1/2, 3/4 of 4 steps: each snapshot evaluated and committed as step<N>-<format>; the adapter
    trained through the pauses equals one trained without them."""
    paused = study_spec.load_spec(_write_spec(
        tmp_path, _tiny_recipe(tmp_path, tiny_dir), seeds=[0], formats=["train"], base_model=False,
        gate={"threshold": 0.0}, checkpoints={"at": [0.25, 0.5, 0.75], "format": "paper",
                                              "evaluate": {"n_per_task": 2}}))
    plan = study_spec.expand(paused, arms=["coin"])[0]
    assert sorted(plan.checkpoints) == [1, 2, 3]
    only_cit = paused.model_copy(update={"checkpoints": paused.checkpoints.model_copy(update={"arms": ["cit"]})})
    assert [bool(p.checkpoints) for p in study_spec.expand(only_cit)] == [True, False]
    assert driver.Driver(paused).pending(plan) == ["train", "eval-train", "step1-paper", "step2-paper", "step3-paper"]
    logged: list[str] = []
    assert driver.run_study(paused, arms=["coin"], log=logged.append) == 0
    assert sum("coin-s0: paused after step" in line for line in logged) == 3
    # the pilot cit-s0, not selected, trains for the gate without pausing: its snapshots wait, unevaluated
    pilot = study_spec.pilot_plan(paused)
    assert not any("cit-s0: paused" in line for line in logged)
    assert all(checkpoints.snapshot_ready(pilot.train, s) for s in (1, 2, 3))
    assert sorted(p.name for p in (tmp_path / "committed" / "st" / "runs" / "cit-s0").iterdir()) == [
        "eval-train", "train"]
    assert driver.Driver(paused).pending(pilot) == ["step1-paper", "step2-paper", "step3-paper"]  # no training
    runs = tmp_path / "committed" / "st" / "runs" / "coin-s0"
    assert sorted(p.name for p in runs.iterdir()) == ["eval-train", "step1-paper", "step2-paper", "step3-paper",
                                                      "train"]
    for step in (1, 2, 3):
        summary = pd.read_csv(runs / f"step{step}-paper" / "summary.csv")
        assert summary["n_instances"].eq(2).all() and summary["model"].eq(f"st-coin-s0-step{step}").all()
        assert json.loads((runs / f"step{step}-paper" / "stage.json").read_text())["adapter_digest"]
    assert driver.Driver(paused).pending(plan) == []
    snapshots = [_weights(checkpoints.snapshot_dir(plan.train, s)) for s in (1, 2, 3)]
    assert not torch.equal(next(iter(snapshots[0].values())), next(iter(snapshots[2].values())))  # they move

    (tmp_path / "plain").mkdir()
    plain = study_spec.load_spec(_write_spec(
        tmp_path / "plain", _tiny_recipe(tmp_path / "plain", tiny_dir), seeds=[0], formats=["train"],
        base_model=False, gate={"threshold": 0.0}))
    driver.run_study(plain, arms=["coin"], log=lambda _: None)
    a = _weights(plan.train.run_dir / "adapter")
    b = _weights(study_spec.expand(plain, arms=["coin"])[0].train.run_dir / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_snapshot_the_run_has_passed_means_training_again_from_the_start(tmp_path, tiny_dir, mirror):
    recipe = _tiny_recipe(tmp_path, tiny_dir)
    spec = study_spec.load_spec(_write_spec(tmp_path, recipe, seeds=[0], formats=["train"], base_model=False,
                                            gate={"threshold": 0.0}))
    driver.run_study(spec, arms=["cit"], log=lambda _: None)  # finished without snapshots
    later = study_spec.load_spec(_write_spec(tmp_path, recipe, seeds=[0], formats=["train"], base_model=False,
                                             gate={"threshold": 0.0}, checkpoints={"at": [0.5]}))
    plan = study_spec.expand(later, arms=["cit"])[0]
    assert driver.Driver(later).pending(plan) == ["train", "step2-train"]
    logged: list[str] = []
    driver.run_study(later, arms=["cit"], log=logged.append)
    assert any("training again from the start" in line for line in logged)
    assert not any("differs from the one committed" in line for line in logged)  # same adapter again
    assert (plan.train.run_dir.with_name(plan.train.run_dir.name + ".replaced") / "adapter").is_dir()
    assert (store.stage_dir(later, "cit-s0", "step2-train") / "summary.csv").is_file()


def test_training_gate_stops_every_arm_at_its_step_when_the_loss_does_not_fall(tmp_path, tiny_dir, mirror):
    spec = study_spec.load_spec(_write_spec(
        tmp_path, _tiny_recipe(tmp_path, tiny_dir, max_steps=8), seeds=[0], formats=["train"], base_model=False,
        gate={"threshold": 0.0}, train_gate={"at": 0.5, "min_drop": 0.99}))
    logged: list[str] = []
    assert driver.run_study(spec, log=logged.append) == driver.GATE_FAILED
    verdict = (tmp_path / "committed" / "st" / "train_gate.txt").read_text()
    assert verdict.startswith("TRAINING GATE STOPPED THE STUDY") and "--ignore-gate" in verdict
    assert "cit-s0 at step 4" in verdict and "coin-s0 at step 4" in verdict
    for plan in study_spec.expand(spec):
        assert checkpoints.newest_step(plan.train) == 4  # both arms paused at the gate, none trained on
        assert not (plan.train.run_dir / "adapter").exists()
    assert not (tmp_path / "committed" / "st" / "runs" / "cit-s0" / "train").exists()


def test_loss_trend_compares_the_first_and_last_quarter():
    falling = [{"step": s, "loss_ent": 10.0 - s} for s in range(1, 9)] + [{"step": 9, "train_runtime": 1.0}]
    trend = checkpoints.loss_trend("cit-s0", 8, falling)
    assert (trend.first, trend.last, trend.n_logged) == (8.5, 2.5, 8)
    rising = [{"step": s, "loss_ent": 1.0 + s} for s in range(1, 9)]
    passed, message = checkpoints.gate_verdict([trend, checkpoints.loss_trend("coin-s0", 4, rising)], 0.0)
    assert not passed and "coin-s0 at step 4: generation loss 2.000" in message and "-> 5.000 (last quarter), -150.0% fall" in message
    assert checkpoints.gate_verdict([trend], 0.5)[0] and not checkpoints.gate_verdict([trend], 0.8)[0]
    with pytest.raises(ValueError, match="at least 2.*logging_steps"):
        checkpoints.loss_trend("cit-s0", 1, falling)


@pytest.mark.parametrize("extra, fragment", [
    ({"checkpoints": {"at": [0.5, 1.0]}}, "strictly between 0 and 1"),
    ({"checkpoints": {"at": [0.5], "evaluate": {"adapters": ["x"]}}}, "cannot set adapters"),
    ({"checkpoints": {"at": [0.5], "evaluate": {"n_per_tsk": 2}}}, "n_per_tsk"),
    ({"train_gate": {"at": 0}}, "train_gate.at"),
    ({"checkpoints": {"at": [0.5], "arms": ["cot"]}}, "checkpoints.arms 'cot' is not an arm"),
])
def test_bad_part_way_settings_are_refused(tmp_path, extra, fragment):
    with pytest.raises(study_spec.StudyError, match=fragment):
        study_spec.expand(study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path), **extra)))


def test_stop_steps_round_and_skip_the_end(tmp_path):
    P = study_spec.arm_params(study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path, train={"max_steps": 781}))),
                              "cit", 0)
    assert study_spec.stop_steps(P, [0.1, 0.25, 0.5, 0.75]) == [78, 195, 390, 586]
    assert study_spec.stop_steps(P, [0.0001, 0.9999]) == [1]
