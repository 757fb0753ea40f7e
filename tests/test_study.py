"""The multi-seed study: spec expansion, the go/no-go gate, resuming from committed outputs, across-seed statistics,
and an end-to-end dry run on the tiny model."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from coinlib.core.params import PARAMS_DIR
from coinlib.core.sources import REPO_ROOT
from coinlib.evaluate.compare import (
    across_seeds,
    long_format,
    min_detectable_difference,
    seed_test,
    seeds_needed,
    sign_flip_p,
)
from coinlib.study import cli, driver, report, store
from coinlib.study import spec as study_spec
from predictions_helper import synthetic_predictions

SPEC = PARAMS_DIR / "studies" / "sentiment.yaml"


def test_committed_stage_outputs_are_not_git_ignored():
    """The committed folder is what a fresh clone resumes from: an ignore rule matching it loses every run."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    spec = study_spec.load_spec(SPEC)
    paths = [store.stage_dir(spec, "coin-s0", stage) / name
             for stage, name in [("train", "train_log.csv"), ("eval-train", "predictions.parquet"),
                                 ("eval-paper", "stage.json")]]
    ignored = {str(p.relative_to(REPO_ROOT)): rule for p in paths if (rule := store.git_ignore_rule(p))}
    assert ignored == {}, f"git ignores committed study outputs: {ignored} (fix the rule in .gitignore)"
    # the scratch folder at the top stays ignored
    assert store.git_ignore_rule(REPO_ROOT / "runs" / "x" / "adapter") is not None


# ------------------------------------------------------------------------------------------------ spec expansion
def test_shipped_spec_expands_into_arms_x_seeds_with_both_formats():
    spec = study_spec.load_spec(SPEC)
    plans = study_spec.expand(spec)
    arms = ["cit", "coin", "coin-xpos", "coin-l10", "coin-l100", "cit-cont", "coin-cont", "coin-balanced"]
    assert [p.key for p in plans] == ["base", *[f"{arm}-s{seed}" for seed in (0, 1, 2) for arm in arms]]
    by = {p.key: p for p in plans}
    assert [by[f"{arm}-s0"].train.train.lambda_ for arm in arms] == [1000, 1000, 1000, 10, 100, 1000, 1000, 1000]
    for arm in ("cit-cont", "coin-cont"):  # the paper's regime: CIT's adapter of the same seed, a fresh sample
        P = by[f"{arm}-s2"].train
        assert P.model.adapter == "runs/study-sentiment-cit-s2/adapter"
        assert (P.data.size, P.data.seed_offset, P.train.max_steps) == (1280, 1000, 160)
    assert study_spec.reference_of(spec, "coin-cont") == "cit-cont" and study_spec.reference_of(spec, "coin") == "cit"
    # beyond the paper: COIN with the contrastive gradient balanced, otherwise COIN's run of the seed
    assert [by[f"{arm}-s0"].train.train.balance for arm in arms] == ["none"] * 7 + ["grad_norm"]
    balanced = by["coin-balanced-s1"].train
    assert balanced.train.model_dump(exclude={"balance"}) == by["coin-s1"].train.train.model_dump(exclude={"balance"})
    assert balanced.data_dir == by["coin-s1"].train.data_dir and balanced.model == by["coin-s1"].train.model
    assert study_spec.reference_of(spec, "coin-balanced") == "cit"
    cit, coin, xpos = by["cit-s1"].train, by["coin-s1"].train, by["coin-xpos-s1"].train
    assert (cit.run.name, cit.run.seed) == ("study-sentiment-cit-s1", 1)
    assert (cit.train.contrastive, coin.train.contrastive, xpos.train.contrastive) == (False, True, True)
    assert xpos.data.extra_positive_levels == ["character", "word", "sentence"]
    assert coin.data.extra_positive_levels == []
    assert coin.train.lambda_ == 1000 and coin.train.batch_size == 8 and coin.train.max_steps == 80
    assert coin.data.tasks == ["sst2", "sentiment140", "imdb", "yelp"] and 480 <= coin.data.size <= 800
    # CIT and COIN of one seed share the built data (same data section and seed); another seed builds other data
    assert cit.data_dir == coin.data_dir != by["cit-s2"].train.data_dir
    # the training differs only where the arms say
    assert cit.train.model_dump(exclude={"contrastive"}) == coin.train.model_dump(exclude={"contrastive"})
    assert xpos.train == coin.train and xpos.model == coin.model == cit.model
    for p in plans:
        every_instance = p.arm in {"cit", "coin", "coin-l10", "coin-l100", "coin-balanced", "cit-cont", "coin-cont"}
        assert list(p.evals) == ["train", "paper", *(["train-all"] if every_instance else [])]
        if every_instance:  # the final comparisons on all 872 SST-2 validation instances, train format
            full = p.evals["train-all"]
            assert (full.evaluate.n_per_task, full.evaluate.input_format) == (872, "train")
            assert full.evaluate.model_dump(exclude={"n_per_task"}) == p.evals["train"].evaluate.model_dump(
                exclude={"n_per_task"})
        for fmt, e in ((f, e) for f, e in p.evals.items() if f != "train-all"):
            assert e.evaluate.input_format == fmt and e.evaluate.scoring == "rank"
            assert (e.evaluate.tasks, e.evaluate.n_per_task, e.evaluate.n_instructions) == (["sst2"], 200, None)
            assert e.evaluate.groups == ["clean", "deepwordbug", "textfooler", "checklist", "semantic"]
            assert e.evaluate.prompt_set == "coin_eval_prompts"
            if p.train is None:
                assert (e.evaluate.include_base, e.evaluate.adapters) == (True, [])
                assert e.run.name == f"study-sentiment-base-eval-{fmt}"
            else:
                assert (e.evaluate.include_base, e.evaluate.adapters) == (False, [p.train.run.name])
                assert e.run.name == f"{p.train.run.name}-eval-{fmt}"
                assert e.run_dir.parent / p.train.run.name == p.train.run_dir  # the runner finds the adapter
    assert study_spec.pilot_plan(spec).key == "cit-s0" and list(study_spec.pilot_plan(spec).evals) == [
        "train", "paper", "train-all"]
    subset = study_spec.expand(spec, arms=["coin"], seeds=[4], formats=["paper"], base_model=False)
    assert [(p.key, list(p.evals)) for p in subset] == [("coin-s4", ["paper"])]


def _write_spec(tmp_path: Path, recipe: dict, **spec) -> Path:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    values = {"name": "st", "params": "recipe.yaml", "committed_root": str(tmp_path / "committed"),
              "arms": {"cit": {"label": "CIT", "train": {"contrastive": False}}, "coin": {"label": "COIN"}},
              "seeds": [0, 1], "formats": ["train", "paper"], "n_boot": 50, **spec}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def _recipe(tmp_path: Path, **sections) -> dict:
    values = {"base": str(PARAMS_DIR / "study-sentiment.yaml"), "run": {"output_root": str(tmp_path / "runs")}}
    for k, v in sections.items():
        values[k] = {**values.get(k, {}), **v}
    return values


@pytest.mark.parametrize("spec, fragments", [
    pytest.param({"arms": {"cit": {"label": "CIT", "train": {"lamda": 1}}}}, ["arms.cit", "train.lamda", "lambda"],
                 id="bad-override"),
    pytest.param({"reference": "coin2"}, ["reference 'coin2' is not an arm"], id="unknown-reference"),
    pytest.param({"gate": {"format": "chat"}}, ["gate.format 'chat'"], id="gate-format"),
    pytest.param({"sedes": [0]}, ["sedes", "Extra inputs"], id="unknown-key"),
    pytest.param({"arms": {"cit": {"label": "CIT"}, "coin": {"label": "COIN", "continues": "coin"}}},
                 ["arms.coin.continues 'coin'"], id="continues-itself"),
    pytest.param({"arms": {"cit": {"label": "CIT", "continues": "coin"}, "coin": {"label": "COIN", "continues": "cit"}}},
                 ["arms.cit.continues 'coin'"], id="continues-a-continuation"),
    pytest.param({"eval_variants": {"all": {"evaluate": {"n_per_task": 872}, "arms": ["coni"]}}},
                 ["eval_variants.all.arms: 'coni' is not an arm"], id="variant-arm"),
    pytest.param({"eval_variants": {"Gen": {"evaluate": {"scoring": "generate"}}}}, ["eval_variants name 'Gen'"],
                 id="variant-name"),
    pytest.param({"eval_variants": {"gen": {"evaluate": {"scoring": "generat"}}}}, ["evaluate.scoring"],
                 id="variant-bad-value"),
    pytest.param({"arms": {"cit": {"label": "CIT"}, "coin": {"label": "COIN", "compare_to": "cot"}}},
                 ["compare_to 'cot' is not another arm"], id="compare-to-unknown"),
    pytest.param({"params": "nowhere.yaml"}, ["params file 'nowhere.yaml' not found"], id="missing-recipe"),
])
def test_bad_spec_names_the_key_and_the_fix(tmp_path, spec, fragments):
    path = _write_spec(tmp_path, _recipe(tmp_path), **spec)
    with pytest.raises(study_spec.StudyError) as err:
        study_spec.load_spec(path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_key_given_twice_in_the_spec_its_recipe_or_a_set_value_is_refused(tmp_path):
    """The last one would win silently (an arm defined twice, a recipe setting given twice)."""
    path = _write_spec(tmp_path, _recipe(tmp_path))
    path.write_text(path.read_text(encoding="utf-8") + "seeds: [0]\n", encoding="utf-8")
    with pytest.raises(study_spec.StudyError, match=rf"{path}: line \d+, column 1: key 'seeds' is given twice .*"
                                                    "Fix: remove one of them"):
        study_spec.load_spec(path)
    path = _write_spec(tmp_path, _recipe(tmp_path))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe.read_text(encoding="utf-8") + "run: {name: again}\n", encoding="utf-8")
    with pytest.raises(study_spec.StudyError, match=rf"{recipe}: line \d+, column 1: key 'run' is given twice"):
        study_spec.load_spec(path)
    with pytest.raises(study_spec.StudyError, match="key 'r' is given twice"):
        study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path)), ["model.lora={r: 4, r: 8}"])


# ------------------------------------------------------------------------------------------------ gate
def _summary(cal_acc: float) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "task": "sst2", "group": ["clean", "checklist"], "cal_acc": [cal_acc, 0.99],
                         "mean_acc": 0.5, "auc": 0.9})


def test_gate_stops_below_the_threshold_and_says_what_to_do():
    gate = study_spec.GateSpec()  # cit seed 0, train format, sst2 clean, cal_acc >= 0.75
    low = driver.gate_decision(_summary(0.745), gate)
    assert not low.passed and low.value == 0.745
    assert "GATE STOPPED" in low.message and "74.5%" in low.message and "75.0%" in low.message
    assert "--ignore-gate" in low.message and "max_steps" in low.message
    assert driver.gate_decision(_summary(0.75), gate).passed  # the threshold itself passes
    assert not driver.gate_decision(_summary(float("nan")), gate).passed
    with pytest.raises(study_spec.StudyError, match="no single sst2/semantic row"):
        driver.gate_decision(_summary(0.8), study_spec.GateSpec(group="semantic"))


# ------------------------------------------------------------------------------------------------ resume (no models)
class Fakes:
    """Stand-ins for training and evaluation that write what the real ones write and record each call."""

    def __init__(self, cal_acc: dict[str, float] | None = None):
        self.trained: list[str] = []
        self.evaluated: list[str] = []
        self.cal_acc = cal_acc or {}

    def train(self, P, callbacks=None):
        self.trained.append(P.run.name)
        adapter = P.run_dir / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / "adapter_model.safetensors").write_bytes(P.run.name.encode())
        (adapter / "coin_params.yaml").write_text(P.to_yaml(), encoding="utf-8")
        pd.DataFrame({"step": [5, 10], "loss": [1.0, 0.5]}).to_csv(P.run_dir / "train_log.csv", index=False)
        return adapter

    def evaluate(self, P, rank=0, world_size=1):
        self.evaluated.append(P.run.name)
        out = P.run_dir / "eval"
        out.mkdir(parents=True, exist_ok=True)
        value = next((v for k, v in self.cal_acc.items() if k in P.run.name), 0.8)
        pd.DataFrame({"model": P.run.name, "task": "sst2", "group": ["clean", "checklist"], "mean_acc": 0.6,
                      "cal_acc": value, "auc": 0.8, "std_cal_acc": 0.02, "flip_rate_cal": [np.nan, 0.1]}
                     ).to_csv(out / "summary.csv", index=False)
        synthetic_predictions(2 * value, 1.0, 0, n=4, model=P.run.name).to_parquet(out / "predictions.parquet")


def _fake_study(tmp_path, monkeypatch, fakes: Fakes, **spec):
    monkeypatch.setattr(driver, "train", fakes.train)
    monkeypatch.setattr(driver, "run_evaluation", fakes.evaluate)
    return study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path), **spec))


def _wipe_local_runs(tmp_path):
    import shutil

    shutil.rmtree(tmp_path / "runs")  # a new session: the work tree's runs/ is gone, the repository is kept


def test_committed_outputs_are_done_across_sessions(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes)
    lines: list[str] = []
    assert driver.run_study(spec, log=lines.append) == 0
    assert fakes.trained == ["st-cit-s0", "st-coin-s0", "st-cit-s1", "st-coin-s1"]  # the pilot first
    assert fakes.evaluated[:1] == ["st-cit-s0-eval-train"] and len(fakes.evaluated) == 2 + 4 * 2
    run = tmp_path / "committed" / "st" / "runs" / "coin-s1"
    assert sorted(p.name for p in run.iterdir()) == ["eval-paper", "eval-train", "train"]
    assert sorted(p.name for p in (run / "train").iterdir()) == ["params.yaml", "stage.json", "train_log.csv"]
    assert sorted(p.name for p in (run / "eval-paper").iterdir()) == [
        "params.yaml", "predictions.parquet", "stage.json", "summary.csv"]
    meta = json.loads((run / "eval-paper" / "stage.json").read_text())
    assert meta["wall_s"] >= 0 and meta["command"].endswith("--arms coin --seeds 1 --no-base --formats paper")
    train_meta = json.loads((run / "train" / "stage.json").read_text())
    for m in (meta, train_meta):  # the precision the stage computed in, and what the hardware offered
        assert m["precision"]["dtype"] == "float32" and m["precision"]["torch"] == torch.__version__
        assert m["precision"]["bf16_is_fast"] in (True, False) and m["precision"]["cpu_capability"]
    assert not list((tmp_path / "committed").rglob(".*"))  # no temporary folders left
    assert any("GATE PASSED" in line for line in lines)
    assert sum("finished in" in line for line in lines) == 4 + 10

    _wipe_local_runs(tmp_path)
    again = Fakes()
    monkeypatch.setattr(driver, "train", again.train)
    monkeypatch.setattr(driver, "run_evaluation", again.evaluate)
    assert driver.run_study(spec, log=lines.append) == 0
    assert again.trained == [] and again.evaluated == []  # nothing retrained or re-evaluated

    # one evaluation lost, adapter gone: that run is retrained and only the missing evaluation is run
    import shutil

    shutil.rmtree(run / "eval-paper")
    assert driver.run_study(spec, log=lines.append) == 0
    assert again.trained == ["st-coin-s1"] and again.evaluated == ["st-coin-s1-eval-paper"]
    # the adapter is still in runs/: a lost evaluation is redone without training
    shutil.rmtree(run / "eval-train")
    assert driver.run_study(spec, log=lines.append) == 0
    assert again.trained == ["st-coin-s1"] and again.evaluated[1:] == ["st-coin-s1-eval-train"]


def test_committed_outputs_with_other_settings_are_refused_then_replaced(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0])
    assert driver.run_study(spec, log=lambda _: None) == 0
    changed = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0], arms={
        "cit": {"label": "CIT", "train": {"contrastive": False}}, "coin": {"label": "COIN", "train": {"lambda": 10}}})
    with pytest.raises(study_spec.StudyError, match=r"(?s)coin-s0/eval-train.*train\.lambda.*--replace-stale"):
        driver.run_study(changed, log=lambda _: None)
    fakes.trained.clear(), fakes.evaluated.clear()
    assert driver.run_study(changed, replace_stale=True, log=lambda _: None) == 0
    assert fakes.trained == ["st-coin-s0"] and fakes.evaluated == ["st-coin-s0-eval-train", "st-coin-s0-eval-paper"]
    saved = yaml.safe_load((tmp_path / "committed/st/runs/coin-s0/train/params.yaml").read_text())
    assert saved["train"]["lambda"] == 10


def test_a_parameter_added_after_a_stage_was_committed_leaves_it_done_at_its_default(tmp_path, monkeypatch):
    """The digest covers every setting, so a new schema key changes it; the stage stays done when the committed
    file lacks only keys whose value is their default, and is stale when a committed value differs."""
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0])
    assert driver.run_study(spec, log=lambda _: None) == 0
    folder = tmp_path / "committed/st/runs/coin-s0/train"
    meta = json.loads((folder / "stage.json").read_text())
    (folder / "stage.json").write_text(json.dumps({**meta, "digest": "made-before-warmup"}))
    saved = yaml.safe_load((folder / "params.yaml").read_text())
    assert saved["train"].pop("warmup_steps") == 5  # the recipe's value, not the default (0)
    (folder / "params.yaml").write_text(yaml.safe_dump(saved))
    plan = next(p for p in study_spec.expand(spec) if p.key == "coin-s0")
    assert store.stale_keys(folder, plan.train) == ["train.warmup_steps"]
    assert store.stage_state(folder, store.settings_digest(plan.train, "train"), plan.train) == "stale"
    saved["train"].pop("lr_scheduler")  # absent and at its default ("linear"): not a difference
    saved["train"]["warmup_steps"] = 5
    saved["train"]["save_steps"] = 999  # a neutral key
    (folder / "params.yaml").write_text(yaml.safe_dump(saved))
    assert store.stale_keys(folder, plan.train) == []
    assert store.stage_state(folder, store.settings_digest(plan.train, "train"), plan.train) == "done"
    assert store.stage_state(folder, store.settings_digest(plan.train, "train")) == "stale"  # digest alone


def test_gate_failure_stops_after_the_pilot(tmp_path, monkeypatch):
    fakes = Fakes(cal_acc={"cit-s0": 0.6})
    spec = _fake_study(tmp_path, monkeypatch, fakes)
    lines: list[str] = []
    assert driver.run_study(spec, log=lines.append) == driver.GATE_FAILED
    assert fakes.trained == ["st-cit-s0"] and fakes.evaluated == ["st-cit-s0-eval-train"]
    assert any("GATE STOPPED" in line and "60.0%" in line for line in lines)
    assert driver.run_study(spec, ignore_gate=True, log=lines.append) == 0
    assert len(fakes.trained) == 4 and len(fakes.evaluated) == 10


def test_only_pilot_runs_the_pilot_in_every_format(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes)
    assert driver.run_study(spec, only="pilot", log=lambda _: None) == 0
    assert fakes.trained == ["st-cit-s0"] and fakes.evaluated == ["st-cit-s0-eval-train", "st-cit-s0-eval-paper"]


def _stops_recorded(monkeypatch, fakes: Fakes) -> dict[str, tuple[list[int], list[int]]]:
    """Fake training that records each run's part-way stops (steps it pauses at, steps it only snapshots at) and
    takes the snapshots asked for without a pause, as ``PauseAt(pause=False)`` does."""
    from coinlib.study.checkpoints import ADAPTER_FILES, PauseAt, snapshot_dir

    stops: dict[str, tuple[list[int], list[int]]] = {}

    def train(P, callbacks=None):
        pauses = [cb for cb in callbacks or [] if isinstance(cb, PauseAt)]
        stops[P.run.name] = tuple(sorted(s for cb in pauses if cb.pause == pause for s in cb.steps)
                                  for pause in (True, False))
        for step in stops[P.run.name][1]:
            snapshot_dir(P, step).mkdir(parents=True, exist_ok=True)
            for name in ADAPTER_FILES:
                (snapshot_dir(P, step) / name).write_text(name)
        return fakes.train(P)

    monkeypatch.setattr(driver, "train", train)
    return stops


def test_a_subset_without_the_pilot_runs_only_what_the_gate_needs_of_it(tmp_path, monkeypatch, capsys):
    """``--arms coin --seeds 1``: the pilot trains and is evaluated in the gate's format, nothing more (its variants
    and part-way evaluations wait until it is selected, then run without training it again); ``--plan`` agrees."""
    from coinlib.study import checkpoints

    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, checkpoints={"at": [0.5]},
                       eval_variants={"all": {"evaluate": {"n_per_task": 50}}})
    stops = _stops_recorded(monkeypatch, fakes)
    assert cli.main([spec.source, "--arms", "coin", "--seeds", "1", "--no-base", "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "cit-s0 (gate)    to do: train, eval-train",
        "coin-s1          to do: train, eval-train, eval-paper, eval-train-all, eval-paper-all, step40-train"]
    assert driver.run_study(spec, arms=["coin"], seeds=[1], base_model=False, log=lambda _: None) == 0
    assert fakes.trained == ["st-cit-s0", "st-coin-s1"]
    assert stops == {"st-cit-s0": ([], [40]), "st-coin-s1": ([40], [])}  # the pilot snapshots without pausing
    assert [e for e in fakes.evaluated if "cit-s0" in e] == ["st-cit-s0-eval-train"]
    assert checkpoints.snapshot_ready(study_spec.pilot_plan(spec).train, 40)

    # the gate's stages committed: another subset without the pilot runs none of the pilot's stages
    fakes.trained.clear(), fakes.evaluated.clear()
    assert cli.main([spec.source, "--arms", "coin", "--seeds", "0", "--no-base", "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("coin-s0 ")  # no gate line: nothing left for it
    assert driver.run_study(spec, arms=["coin"], seeds=[0], base_model=False, log=lambda _: None) == 0
    assert fakes.trained == ["st-coin-s0"] and not [e for e in fakes.evaluated if "cit-s0" in e]

    # the pilot selected: its other stages run in its place, from the adapter and snapshot already there
    fakes.trained.clear(), fakes.evaluated.clear()
    assert driver.run_study(spec, arms=["cit"], seeds=[0], base_model=False, log=lambda _: None) == 0
    assert fakes.trained == [] and fakes.evaluated == [
        "st-cit-s0-eval-paper", "st-cit-s0-eval-train-all", "st-cit-s0-eval-paper-all", "st-cit-s0-eval-train-step40"]


def test_a_selected_pilot_pauses_at_its_part_way_stops_while_trained_for_the_gate(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0], checkpoints={"at": [0.5]})
    stops = _stops_recorded(monkeypatch, fakes)
    assert driver.run_study(spec, base_model=False, log=lambda _: None) == 0
    assert stops == {"st-cit-s0": ([40], []), "st-coin-s0": ([40], [])}
    assert fakes.evaluated[0] == "st-cit-s0-eval-train" and len(fakes.evaluated) == 2 * 3


def test_training_randomness_follows_the_run_seed(tmp_path, monkeypatch):
    import torch

    fakes, draws = Fakes(), {}

    def train(P, callbacks=None):
        draws[P.run.name] = torch.rand(1).item()  # what the LoRA initialisation would draw
        torch.manual_seed(1234)  # whatever a run leaves behind must not leak into the next one
        return fakes.train(P)

    spec = _fake_study(tmp_path, monkeypatch, fakes)
    monkeypatch.setattr(driver, "train", train)
    assert driver.run_study(spec, log=lambda _: None) == 0
    expected = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected[seed] = torch.rand(1).item()
    assert draws == {"st-cit-s0": expected[0], "st-coin-s0": expected[0], "st-cit-s1": expected[1],
                     "st-coin-s1": expected[1]}


def test_plan_estimates_the_time_left_from_committed_stage_times(tmp_path, monkeypatch, capsys):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0])
    assert cli.main([spec.source, "--only", "pilot"]) == 0
    for stage, wall in (("train", 600.0), ("eval-train", 120.0), ("eval-paper", 60.0)):
        meta = store.stage_dir(spec, "cit-s0", stage) / "stage.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "wall_s": wall}))
    assert store.stage_times(spec) == {"train": 600.0, "eval-train": 120.0, "eval-paper": 60.0}
    capsys.readouterr()
    assert cli.main([spec.source, "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("to do: eval-train, eval-paper (about 3 min)")  # the base model: evaluations only
    assert lines[2].endswith("to do: train, eval-train, eval-paper (about 13 min)")
    assert lines[-1].startswith("time left: about 0.3 h")


def test_command_line_plan_and_params(tmp_path, monkeypatch, capsys):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0])
    assert cli.main([spec.source, "--only", "pilot"]) == 0
    capsys.readouterr()
    assert cli.main([spec.source, "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["base", "cit-s0", "coin-s0"]
    assert lines[1].endswith("done") and "to do: train, eval-train, eval-paper" in lines[2]
    assert cli.main([spec.source, "--base-only", "--plan"]) == 0
    assert capsys.readouterr().out.split() == ["base", "to", "do:", "eval-train,", "eval-paper"]
    assert cli.main([spec.source, "--print-params", "coin-s0:paper"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["run"]["name"] == "st-coin-s0-eval-paper" and printed["evaluate"]["input_format"] == "paper"
    assert cli.main([spec.source, "--arms", "nope"]) == 2


def test_the_driver_warns_when_git_would_ignore_the_committed_outputs(tmp_path, monkeypatch, capsys):
    """An unanchored `runs/` rule also matches `<committed_root>/<name>/runs/`: the driver says so before running."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n", encoding="utf-8")
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0])
    assert store.git_ignore_rule(store.stage_dir(spec, "cit-s0", "train") / "stage.json") == ".gitignore:1:runs/"
    assert cli.main([spec.source, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "warning: git ignores the committed outputs" in out and ".gitignore:1:runs/" in out and "'/runs/'" in out
    logged: list[str] = []
    assert driver.run_study(spec, only="pilot", log=logged.append) == 0
    assert "git ignores" in logged[0] and fakes.trained  # a warning, not a stop
    (tmp_path / ".gitignore").write_text("/runs/\n", encoding="utf-8")  # anchored: only the scratch folder
    assert store.warn_if_git_ignored(spec, logged.append) is None
    assert store.git_ignore_rule(tmp_path / "runs" / "x") == ".gitignore:1:/runs/"


# ------------------------------------------------------------------------------------------------ statistics
def test_seed_test_on_a_hand_made_table():
    # differences 0.01, 0.03, 0.05: mean 0.03, SD 0.02, SE 0.02 / sqrt(3) = 0.011547, t = 2.5981 (df 2)
    out = seed_test([0.51, 0.53, 0.55], [0.50, 0.50, 0.50], se_inst=[0.01, 0.01, 0.01])
    assert out["mean_diff"] == pytest.approx(0.03) and out["sd_diff"] == pytest.approx(0.02)
    assert out["t"] == pytest.approx(2.598076, rel=1e-6) and out["n_positive"] == 3
    assert out["p_t"] == pytest.approx(stats.ttest_1samp([0.01, 0.03, 0.05], 0).pvalue)
    # t_{0.975, 2} = 4.302653: half-width 4.302653 * 0.011547 = 0.049683
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.03 - 0.049683, 0.03 + 0.049683), abs=1e-6)
    assert out["p_perm"] == 0.25  # only the two all-same-sign patterns of 8 reach |mean| 0.03
    # SE_total = sqrt(0.02^2 / 3 + 0.01^2) = 0.0152753; MDD = (4.302653 + t_{0.8, 2} = 1.060660) * SE_total
    assert out["se_total"] == pytest.approx(0.0152753, rel=1e-5)
    assert out["mdd"] == pytest.approx((4.302653 + 1.060660) * 0.0152753, rel=1e-5)
    one = seed_test([0.6], [0.5], [0.01])
    assert one["mean_diff"] == pytest.approx(0.1) and np.isnan(one["t"]) and np.isnan(one["mdd"])
    assert one["p_perm"] == 1.0  # one seed: both sign patterns reach |mean|


def test_sign_flip_p_matches_enumeration_and_mdd_matches_scipy():
    d = np.array([0.02, -0.01, 0.04, 0.03])
    means = [abs(np.dot(s, d)) / 4 for s in itertools.product([-1, 1], repeat=4)]
    assert sign_flip_p(d) == pytest.approx(np.mean([m >= abs(d.mean()) - 1e-12 for m in means]))
    assert sign_flip_p(d) == pytest.approx(4 / 16)  # by hand: sums 0.08 (as given) and 0.10 (-0.01 flipped), +-
    for n in (2, 3, 5, 10):
        se = np.sqrt(0.03 ** 2 / n + 0.01 ** 2)
        expected = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * se
        assert min_detectable_difference(0.03, 0.01, n) == pytest.approx(expected)
    # fewest seeds with MDD <= 0.04 for SD 0.03 and SE 0.005, by a separate loop
    first = next(n for n in range(2, 100) if (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1))
                 * np.sqrt(0.03 ** 2 / n + 0.005 ** 2) <= 0.04)
    assert seeds_needed(0.03, 0.005, 0.04) == first
    assert seeds_needed(0.0, 0.02, 0.04) is None  # (1.96 + 0.84) * 0.02 > 0.04 for any number of seeds


def test_long_format_and_across_seeds():
    paired = pd.DataFrame({"group": ["clean", "average"]})
    for m in ("acc", "std", "auc", "cal_acc", "std_cal_acc", "flip_rate", "flip_rate_cal"):
        paired[f"{m}_a"], paired[f"{m}_b"], paired[f"{m}_diff"] = 0.6, 0.5, 0.1
        paired[f"{m}_diff_low"], paired[f"{m}_diff_high"] = 0.1 - 0.0392, 0.1 + 0.0392
    long = long_format(paired)
    assert len(long) == 14 and set(long["metric"]) == {"acc", "std", "auc", "cal_acc", "std_cal_acc",
                                                       "flip_rate", "flip_rate_cal"}
    assert long["se"].to_numpy() == pytest.approx(0.0392 / 1.959964, rel=1e-5)
    per_seed = pd.concat([long.assign(seed=s, arm="coin", reference="cit", format="train",
                                      a=long["a"] + 0.01 * s, diff=long["diff"] + 0.01 * s) for s in (2, 0, 1)])
    across = across_seeds(per_seed)
    assert len(across) == 14 and (across["n_seeds"] == 3).all() and (across["seeds"] == "0 1 2").all()
    row = across[(across.group == "clean") & (across.metric == "cal_acc")].iloc[0]
    assert row["mean_diff"] == pytest.approx(0.11) and row["sd_diff"] == pytest.approx(0.01)
    assert row["se_inst"] == pytest.approx(0.02, rel=1e-4)


# ------------------------------------------------------------------------------------------------ end to end


def test_dry_run_on_the_tiny_model_commits_the_layout_and_the_report(tmp_path, tiny_dir, mirror):
    recipe = _recipe(tmp_path, model={"name": str(tiny_dir)}, data={"size": 8},
                     train={"max_steps": 2, "batch_size": 2, "micro_batch_pairs": 2, "save_steps": 2,
                            "logging_steps": 1, "cutoff_len": 64},
                     evaluate={"n_per_task": 4, "groups": ["clean", "checklist"], "n_instructions": 1,
                               "batch_size": 4})
    spec = study_spec.load_spec(_write_spec(tmp_path, recipe, gate={"threshold": 0.0}))
    assert driver.run_study(spec, log=lambda _: None) == 0
    root = tmp_path / "committed" / "st"
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["base", "cit-s0", "cit-s1", "coin-s0", "coin-s1"]
    for key in ("cit-s0", "coin-s1"):
        assert (root / "runs" / key / "train" / "train_log.csv").is_file()
        for fmt in ("train", "paper"):
            summary = pd.read_csv(root / "runs" / key / f"eval-{fmt}" / "summary.csv")
            assert set(summary["group"]) == {"clean", "checklist"} and summary["n_instances"].eq(4).all()
            params = yaml.safe_load((root / "runs" / key / f"eval-{fmt}" / "params.yaml").read_text())
            assert params["evaluate"]["input_format"] == fmt
    assert not list((root / "runs").rglob("adapter*"))  # adapters stay in runs/, never committed
    preds = {k: pd.read_parquet(root / "runs" / k / "eval-train" / "predictions.parquet") for k in ("cit-s0", "cit-s1")}
    key = ["group", "instruction_id", "instance_id"]
    assert preds["cit-s0"][key].sort_values(key).equals(preds["cit-s1"][key].sort_values(key))  # one sample
    assert not preds["cit-s0"]["label_scores"].equals(preds["cit-s1"]["label_scores"])  # the seed changes training
    written = report.write_report(spec)
    runs = written["runs"]
    assert len(runs) == 5 * 2 and (runs["status"] == "done").all() and runs.loc[runs.arm != "base", "steps"].eq(2).all()
    per_seed = written["per_seed"]
    assert sorted(set(zip(per_seed["format"], per_seed["seed"]))) == [("paper", 0), ("paper", 1), ("train", 0),
                                                                      ("train", 1)]
    assert (written["across"]["n_seeds"] == 2).all()
    for name in ("study_runs.csv", "study_per_seed.csv", "study_across_seeds.csv", "study.md",
                 "seed_differences_train.png", "seed_differences_paper.pdf", "training_losses.png", "training_losses.csv"):
        assert (root / name).is_file(), name
    assert "COIN − CIT, paper format: average over groups" in (root / "study.md").read_text()


def test_committed_progress_resumes_a_long_run_in_a_fresh_clone(tmp_path, smol_tokenizer):
    """commit_progress: the newest checkpoint is committed at every save; a clone without runs/ resumes from it and
    ends with the adapter of an uninterrupted run."""
    from entries_helper import make_entries
    from test_trainer import _Kill, adapter_weights, fresh_model, make_params

    from coinlib.train import trainer as train_mod

    data = make_entries(12)
    full = make_params(tmp_path, "full", max_steps=4)
    train_mod.train_on(full, data, fresh_model(smol_tokenizer), smol_tokenizer)
    part = make_params(tmp_path, "part", max_steps=4)
    folder, clock = tmp_path / "committed" / "runs" / "part" / store.PROGRESS, part.run_dir / "study_train.json"
    clock.parent.mkdir(parents=True)
    clock.write_text(json.dumps({"digest": "d", "attempts_s": [5.0]}))
    keeper = driver.ProgressKeeper(folder, "d", clock, part)
    with pytest.raises(_Kill.Killed):
        train_mod.train_on(part, data, fresh_model(smol_tokenizer), smol_tokenizer, callbacks=[keeper, _Kill(3)])
    assert json.loads((folder / "stage.json").read_text())["step"] == 2
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "optimizer.pt").is_file()
    assert not list(folder.glob("tokenizer*")) and not (folder / "README.md").exists()  # not needed to resume
    assert not (folder / "training_args.bin").exists()  # a pickle with machine paths
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == part.model.name
    shutil.rmtree(part.run_dir)  # a fresh clone: no checkpoint, no attempt times
    assert store.restore_progress(folder, "other settings", part.run_dir / "checkpoints", clock) is None
    other = make_params(tmp_path, "part", max_steps=5)  # another schedule: another run's progress
    assert store.restore_progress(folder, "a newer digest", part.run_dir / "checkpoints", clock, other) is None
    # the same settings under a digest made after a parameter was added to the schema (params.yaml decides)
    restored = store.restore_progress(folder, "a newer digest", part.run_dir / "checkpoints", clock, part)
    assert restored == part.run_dir / "checkpoints" / "checkpoint-2"
    assert json.loads(clock.read_text())["attempts_s"] == [5.0]  # the earlier session's time is kept
    assert driver.StageClock(clock, "a newer digest").attempts() == [5.0]  # and counts under the new digest
    assert store.restore_progress(folder, "d", part.run_dir / "checkpoints", clock) is None  # local is as new
    train_mod.train_on(part, data, fresh_model(smol_tokenizer), smol_tokenizer, callbacks=[keeper])
    a, b = adapter_weights(full.run_dir / "adapter"), adapter_weights(part.run_dir / "adapter")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert json.loads((folder / "stage.json").read_text())["step"] == 4
    assert not list(folder.parent.glob(".*"))  # no temporary folders left


def test_dose_response_takes_the_arms_that_differ_only_in_lambda(tmp_path):
    spec = study_spec.load_spec(SPEC)
    dose = report.dose_arms(spec)
    assert dose == {"cit": 0.0, "coin": 1000.0, "coin-l10": 10.0, "coin-l100": 100.0}  # coin-xpos changes the data
    runs = pd.DataFrame([dict(run=f"{a}-s{s}", arm=a, seed=s, format="train", status=st, cal_acc=0.7 - lam / 1e4,
                              auc=0.8, flip_rate_cal=0.1 + lam / 1e4)
                         for a, lam in [*dose.items(), ("coin-xpos", -1)] for s, st in ((0, "done"), (1, "not run"))])
    got = report.dose_response(spec, runs)
    assert list(got["arm"]) == ["cit", "coin-l10", "coin-l100", "coin"] and list(got["lambda"]) == [0, 10, 100, 1000]
    from coinlib.results import plots

    fig = plots.plot_dose_response(got)
    assert [ax.get_xscale() for ax in fig.axes] == ["symlog"] * 3
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 10, 100, 1000] and list(line.get_ydata()) == pytest.approx([70, 69.9, 69, 60])


def test_a_continuing_arm_trains_the_arm_it_continues_first(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[1], arms={
        "cit": {"label": "CIT", "train": {"contrastive": False}},
        "coin-cont": {"label": "COIN continued", "continues": "cit", "data": {"seed_offset": 7}}})
    plan = study_spec.expand(spec, arms=["coin-cont"], base_model=False)[0]
    assert plan.train.model.adapter == str(tmp_path / "runs" / "st-cit-s1" / "adapter")  # outside the repository
    lines: list[str] = []
    driver.Driver(spec, log=lines.append).run_plan(plan)
    assert fakes.trained == ["st-cit-s1", "st-coin-cont-s1"]
    assert any("continues cit-s1: training cit-s1 first" in line for line in lines)
    assert (tmp_path / "committed" / "st" / "runs" / "cit-s1" / "train" / "stage.json").is_file()
    driver.Driver(spec, log=lines.append).run_plan(study_spec.expand(spec, arms=["cit"], base_model=False)[0])
    assert fakes.trained == ["st-cit-s1", "st-coin-cont-s1"]  # its adapter was ready: not trained again


def test_evaluation_variants_are_stages_of_their_own(tmp_path, monkeypatch):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0], eval_variants={
        "generate": {"evaluate": {"scoring": "generate"}, "formats": ["paper"]},
        "all": {"evaluate": {"n_per_task": 872}, "arms": ["coin", "base"]}})
    plans = {p.key: p for p in study_spec.expand(spec)}
    # (the spec file lists the variants in key order: all, generate)
    assert list(plans["coin-s0"].evals) == ["train", "paper", "train-all", "paper-all", "paper-generate"]
    assert list(plans["cit-s0"].evals) == ["train", "paper", "paper-generate"]
    assert list(plans["base"].evals) == ["train", "paper", "train-all", "paper-all", "paper-generate"]
    Pg, Pa = plans["coin-s0"].evals["paper-generate"], plans["coin-s0"].evals["train-all"]
    assert (Pg.evaluate.scoring, Pg.evaluate.input_format, Pg.run.name) == ("generate", "paper", "st-coin-s0-eval-paper-generate")
    assert (Pa.evaluate.n_per_task, Pa.evaluate.scoring) == (872, plans["coin-s0"].evals["train"].evaluate.scoring)
    assert driver.Driver(spec).pending(plans["coin-s0"], formats=["paper"]) == ["train", "eval-paper", "eval-paper-all",
                                                                               "eval-paper-generate"]
    assert driver.run_study(spec, log=lambda _: None) == 0
    done = tmp_path / "committed" / "st" / "runs" / "coin-s0"
    assert sorted(p.name for p in done.iterdir()) == ["eval-paper", "eval-paper-all", "eval-paper-generate", "eval-train",
                                                      "eval-train-all", "train"]
    assert yaml.safe_load((done / "eval-paper-generate" / "params.yaml").read_text())["evaluate"]["scoring"] == "generate"
    assert all(not driver.Driver(spec).pending(p) for p in plans.values())


def test_no_variants_runs_everything_but_the_evaluation_variants(tmp_path, monkeypatch, capsys):
    fakes = Fakes()
    spec = _fake_study(tmp_path, monkeypatch, fakes, seeds=[0], eval_variants={"all": {"evaluate": {"n_per_task": 872}}})
    assert cli.main([spec.source, "--no-variants", "--no-base"]) == 0
    done = tmp_path / "committed" / "st" / "runs" / "coin-s0"
    assert sorted(p.name for p in done.iterdir()) == ["eval-paper", "eval-train", "train"]
    capsys.readouterr()
    assert cli.main([spec.source, "--plan", "--no-base"]) == 0  # the variants are still to do, nothing else
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("to do: ")[1].split(" (")[0] for line in lines[:2]] == ["eval-train-all, eval-paper-all"] * 2


def test_plan_scales_part_way_and_variant_evaluations_from_the_main_one(tmp_path):
    recipe = _recipe(tmp_path, train={"max_steps": 8}, evaluate={"n_per_task": 100})
    spec = study_spec.load_spec(_write_spec(tmp_path, recipe, checkpoints={"at": [0.5], "evaluate": {"n_per_task": 50}},
                                            eval_variants={"all": {"evaluate": {"n_per_task": 400}}}))
    plan = study_spec.expand(spec, arms=["coin"], seeds=[0], base_model=False)[0]
    typical = {"train": 30.0, "eval-train": 100.0}
    got = {stage: cli.stage_estimate(typical, plan, stage)
           for stage in ("train", "eval-train", "step4-train", "eval-train-all", "eval-paper", "eval-paper-all")}
    assert got == {"train": 30.0, "eval-train": 100.0, "step4-train": 50.0, "eval-train-all": 400.0,
                   "eval-paper": 0.0, "eval-paper-all": 0.0}  # nothing known of the paper format yet
    # a training in progress counts its steps left: at the committed trainings' pace, else at its own
    progress = {plan.key: (6, 120.0)}
    assert cli.stage_estimate(typical, plan, "train", progress) == pytest.approx(30.0 * 2 / 8)
    assert cli.stage_estimate({}, plan, "train", progress) == pytest.approx(20.0 * 2)
    assert cli.stage_estimate({}, plan, "train", {"other-s0": (6, 120.0)}) == pytest.approx(20.0 * 8)  # its pace
    assert cli.stage_estimate(typical, plan, "train", {"other-s0": (6, 120.0)}) == 30.0  # committed: those
    assert cli._estimate_note([0.0, 120.0, 0.0]) == " (about 2 min, 2 without an estimate)"
    assert cli._estimate_note([0.0]) == " (1 without an estimate)" and cli._estimate_note([]) == ""


def test_training_progress_reads_the_committed_step_and_attempt_times(tmp_path):
    spec = study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path)))
    checkpoint = tmp_path / "checkpoint-6"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "adapter_config.json").write_text(json.dumps({"target_modules": ["v_proj", "q_proj", "k_proj"]}))
    clock = tmp_path / "clock.json"
    clock.write_text(json.dumps({"digest": "d", "attempts_s": [100.0, 50.0]}))
    store.save_progress(checkpoint, store.stage_dir(spec, "cit-s0", store.PROGRESS), "d", clock)
    store.save_progress(checkpoint, store.stage_dir(spec, "coin-s0", store.PROGRESS), "d")  # no times: left out
    assert store.training_progress(spec) == {"cit-s0": (6, 150.0)}
    config = json.loads((store.stage_dir(spec, "cit-s0", store.PROGRESS) / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "q_proj", "v_proj"]  # one order, whatever peft's set gave
    runs = report.committed_runs(spec).set_index(["run", "format"])
    total = study_spec.arm_params(spec, "cit", 0).train.max_steps
    assert runs.loc[("cit-s0", "train"), "status"] == f"training: step 6 of {total}"  # the report shows it too
    assert runs.loc[("cit-s0", "train"), "train_s"] == 150.0 and runs.loc[("coin-s0", "train"), "status"] == "not run"


def test_table3_layout_from_the_committed_sentiment_runs():
    spec = study_spec.load_spec(SPEC).model_copy(update={"n_boot": 50})
    sections = report.paper_sections(spec, "train")
    groups = sections["groups"].set_index("group")
    committed = pd.read_csv(store.runs_dir(spec) / "cit-s0" / "eval-train" / "summary.csv")
    clean = committed.loc[committed["group"] == "clean", "mean_acc"].iloc[0]
    assert groups.loc["clean", "ours smollm2-135m-instruct: CIT"].startswith(f"{100 * clean:.1f} ± ")
    assert groups.loc["clean", "paper Alpaca-7B: COIN"] == "91.4 ± 0.7"  # Table 3, SST-2, clean instructions
    assert list(dict.fromkeys(sections["paired"]["comparison"])) == ["COIN - CIT", "CIT - base", "COIN - base"]
    assert list(sections["tasks"]["task"]) == ["sst2"]
    assert report.paper_sections(spec.model_copy(update={"seeds": [7]}), "train") == {}  # nothing committed


def test_training_logs_take_finished_logs_and_committed_progress_and_the_figure_names_every_arm(tmp_path):
    from coinlib.results import plots

    spec = study_spec.load_spec(_write_spec(tmp_path, _recipe(tmp_path)))
    finished = store.stage_dir(spec, "cit-s0", "train")
    finished.mkdir(parents=True)
    pd.DataFrame({"step": [5, 10], "loss": [3.0, 2.0], "loss_ent": [3.0, 2.0], "loss_ctr": [None, None]}).to_csv(
        finished / "train_log.csv", index=False)
    part_way = store.stage_dir(spec, "coin-s1", store.PROGRESS)
    part_way.mkdir(parents=True)
    history = [{"step": 10, "loss": 9.0, "loss_ent": 4.0, "loss_ctr": 0.5},
               {"step": 20, "loss": 8.0, "loss_ent": 3.5, "loss_ctr": 0.4}, {"step": 20, "train_loss": 8.5}]
    (part_way / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (store.runs_dir(spec) / "base").mkdir()  # no training: not a row
    logs = report.training_logs(spec)
    assert list(logs.columns) == ["run", "arm", "seed", "finished", "step", "loss_ent", "loss_ctr"]
    assert logs.groupby("run")["step"].apply(list).to_dict() == {"cit-s0": [5, 10], "coin-s1": [10, 20]}
    coin = logs[logs.run == "coin-s1"]
    assert coin["arm"].eq("coin").all() and coin["seed"].eq(1).all() and not coin["finished"].any()
    assert coin["loss_ent"].tolist() == [4.0, 3.5] and logs.loc[logs.run == "cit-s0", "loss_ctr"].isna().all()
    fig = plots.plot_training_losses(logs, {"cit": "CIT", "coin": "COIN"})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["L_ent (generation)", "L_ctr (InfoNCE)"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["CIT", "COIN"]  # CIT has no L_ctr line
    assert fig.axes[0].get_lines()[1].get_linestyle() == "--"  # the part-way run is dashed
    plots.plt.close(fig)
