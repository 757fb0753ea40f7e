"""End-to-end evaluation on a tiny saved model: tables, resume without duplicates, adapters, two-process sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import coinlib.evaluate.runner as ev
from coinlib.core.params import validate
from coinlib.evaluate.metrics import SUMMARY_COLUMNS
from coinlib.evaluate.runner import (
    PREDICTION_COLUMNS,
    EvaluationError,
    Unit,
    run_evaluation,
    shard,
)
from coinlib.evaluate.scoring import score_instruction

KEY = ["model", "task", "group", "instruction_id", "instance_id"]




def _values(tiny_dir, out, **evaluate) -> dict:
    settings = dict(tasks=["sst2", "rte"], n_per_task=3, groups=["clean", "checklist"], n_instructions=2,
                    scoring="rank", batch_size=2, adapters=[])
    return {"base": "smoke.yaml", "run": {"name": "t", "output_root": str(out)}, "model": {"name": str(tiny_dir)},
            "evaluate": {**settings, **evaluate}}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


def test_tables_follow_the_contract(tiny_dir, tmp_path, mirror):
    P = validate(_values(tiny_dir, tmp_path))
    tables = run_evaluation(P, rank=0, world_size=1)
    preds = pd.read_parquet(P.run_dir / "eval" / "predictions.parquet")
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert len(preds) == 2 * 2 * 2 * 3 and not preds.duplicated(KEY).any()
    assert pd.read_csv(P.run_dir / "eval" / "predictions.csv").shape == preds.shape
    summary = pd.read_csv(P.run_dir / "eval" / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 4
    assert summary[["mean_acc", "ci_low", "ci_high"]].apply(lambda c: c.between(0, 1)).all().all()
    # the same instances for every instruction and group
    ids = preds.groupby(["task", "group", "instruction_id"])["instance_id"].apply(frozenset)
    assert ids.groupby("task").nunique().eq(1).all()
    assert all(set(json.loads(s)) == {"negative", "positive"} for s in preds.loc[preds.task == "sst2", "label_scores"])
    assert all(json.loads(s).keys() == {"negative", "positive"} 
               for s in preds.loc[preds.task == "sst2", "label_tokens"])
    assert tables.predictions.equals(preds)
    # rank mode: the label-free metrics are in the summary (flip rates for the perturbed group only)
    check = summary[summary["group"] == "checklist"].set_index("task")
    assert check[["cal_acc", "flip_rate", "flip_rate_cal"]].apply(lambda c: c.between(0, 1)).all().all()
    both_classes = preds.groupby("task")["gold"].nunique() == 2  # AUC is undefined when the sample has one class
    assert check["auc"].between(0, 1).eq(both_classes).all() and check["auc"].isna().eq(~both_classes).all()
    assert (check[["margin_sd", "posix"]] >= 0).all().all()
    assert summary.loc[summary["group"] == "clean", ["flip_rate", "flip_rate_cal"]].isna().all().all()


def test_resume_recomputes_nothing_and_duplicates_nothing(tiny_dir, tmp_path, mirror):
    P = validate(_values(tiny_dir, tmp_path))
    calls: list[str] = []

    def failing(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted after three units
        calls.append(args[2])
        return score_instruction(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(P, rank=0, world_size=1, scorer=failing)
    done = list((P.run_dir / "eval" / "cache").rglob("*.parquet"))
    assert len(done) == 3 and not list((P.run_dir / "eval" / "cache").rglob("*.tmp"))
    calls.clear()

    def counting(*args, **kwargs):
        calls.append(args[2])
        return score_instruction(*args, **kwargs)

    resumed = run_evaluation(P, rank=0, world_size=1, scorer=counting).predictions
    assert len(calls) == 8 - 3  # only the missing units
    assert not resumed.duplicated(KEY).any() and len(resumed) == 24
    fresh = run_evaluation(validate(_values(tiny_dir, tmp_path / "fresh")), rank=0, world_size=1).predictions
    pd.testing.assert_frame_equal(_sorted(resumed), _sorted(fresh))
    calls.clear()
    run_evaluation(P, rank=0, world_size=1, scorer=counting)  # everything cached: nothing recomputed
    assert calls == []


def test_changed_settings_do_not_reuse_results(tiny_dir, tmp_path, mirror):
    rank = validate(_values(tiny_dir, tmp_path))
    run_evaluation(rank, rank=0, world_size=1)
    gen = run_evaluation(validate(_values(tiny_dir, tmp_path, scoring="generate", max_new_tokens=2)), 0, 1)
    assert (gen.predictions["label_scores"] == "{}").all() and (gen.predictions["label_tokens"] == "{}").all()
    assert gen.summary[["auc", "cal_acc", "margin_sd", "posix"]].isna().all().all()  # no label scores to read
    assert len(list((rank.run_dir / "eval" / "cache").iterdir())) == 2


def test_units_of_an_older_cache_format_are_not_reused(tiny_dir, tmp_path, monkeypatch):
    P = validate(_values(tiny_dir, tmp_path))
    current = ev.settings_key(P)
    monkeypatch.setattr(ev, "CACHE_FORMAT", ev.CACHE_FORMAT - 1)
    assert ev.settings_key(P) != current


def test_precision_keys_the_cache_and_auto_shares_the_key_of_the_dtype_it_resolves_to(tiny_dir, tmp_path,
                                                                                      monkeypatch):
    from coinlib.core import precision

    def key(dtype):
        values = _values(tiny_dir, tmp_path)
        values["model"] = {**values.get("model", {}), "dtype": dtype}
        return ev.settings_key(validate(values))

    assert key("bfloat16") != key("float32")  # an fp32 result is never reused as a bf16 one
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device=None: True)
    assert key("auto") == key("bfloat16")
    monkeypatch.setattr(precision, "bf16_is_fast", lambda device=None: False)
    assert key("auto") == key("float32")


def test_edited_prompt_file_reevaluates_only_the_changed_instruction(tiny_dir, tmp_path, mirror):
    prompts = {"clean": {"sst2": ["Classify the sentiment: ", "Is this positive or negative? "]}}
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    P = validate(_values(tiny_dir, tmp_path, prompt_set=str(path), tasks=["sst2"], groups=["clean"]))
    run_evaluation(P, rank=0, world_size=1)
    prompts["clean"]["sst2"][1] = "Positive or negative? "
    path.write_text(json.dumps(prompts))
    calls: list[str] = []

    def counting(*args, **kwargs):
        calls.append(args[2])
        return score_instruction(*args, **kwargs)

    preds = run_evaluation(P, rank=0, world_size=1, scorer=counting).predictions
    assert calls == ["Positive or negative? "]
    assert set(preds["instruction"]) == {"Classify the sentiment: ", "Positive or negative? "}


def test_retrained_adapter_in_the_same_folder_is_not_served_from_cache(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    spec = [ev.ModelSpec("cit", str(adapter))]
    prompts = {"clean": {"sst2": ["Classify: "]}}
    before = ev.plan_units(spec, prompts)[0].path(tmp_path)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    assert ev.plan_units(spec, prompts)[0].path(tmp_path) != before
    assert ev.weights_digest(None) is None


def test_shards_are_disjoint_and_complete():
    units = [Unit("m", "t", "g", i) for i in range(11)]
    parts = [shard(units, r, 3) for r in range(3)]
    assert sorted((u for p in parts for u in p), key=lambda u: u.instruction_id) == units
    assert len({u for p in parts for u in p}) == 11
    with pytest.raises(EvaluationError, match="rank 3 outside world size 3"):
        shard(units, 3, 3)


def test_adapters_are_evaluated_beside_the_base(tiny_dir, tmp_path, mirror):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    cfg = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(tmp_path / "mine")
    run_adapter = tmp_path / "runs" / "cit" / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), cfg).save_pretrained(run_adapter)
    first = validate(_values(tiny_dir, tmp_path / "runs", adapters=["cit"], n_instructions=1))
    run_evaluation(first, rank=0, world_size=1)
    P = validate(_values(tiny_dir, tmp_path / "runs", adapters=[str(tmp_path / "mine"), "cit"], n_instructions=1))
    calls: list[str] = []

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return score_instruction(model, *args, **kwargs)

    preds = run_evaluation(P, rank=0, world_size=1, scorer=counting).predictions
    assert len(calls) == 2 * 2  # adding "mine" evaluates only its units (2 tasks x 2 groups x 1 instruction)
    assert list(dict.fromkeys(preds["model"])) == ["base", "mine", "cit"]
    by_model = preds.set_index(["model", "task", "group", "instance_id"])["label_scores"]
    assert (by_model["base"] != by_model["mine"]).all()  # the adapter changes the scores
    assert set(preds.loc[preds.model == "cit", "adapter"]) == {str(run_adapter)}
    with pytest.raises(EvaluationError, match="notebooks/02_train.ipynb"):
        ev.model_specs(validate(_values(tiny_dir, tmp_path / "runs", adapters=["never_trained"])))


def test_two_processes_split_the_work_and_merge_into_one_table(tiny_dir, tmp_path, mirror):
    values = _values(tiny_dir, tmp_path / "sharded")
    values["run"]["mirror"] = str(mirror)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    code = ("import sys; from coinlib.evaluate.runner import run_evaluation; from coinlib.core.params import load_params;"
            "run_evaluation(load_params(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "p.yaml")],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    sharded = pd.read_parquet(tmp_path / "sharded" / "t" / "eval" / "predictions.parquet")
    single = run_evaluation(validate(_values(tiny_dir, tmp_path / "single")), rank=0, world_size=1).predictions
    assert not sharded.duplicated(KEY).any()
    pd.testing.assert_frame_equal(_sorted(sharded), _sorted(single))
