"""`--set KEY=VALUE` on the train, evaluate, pipeline and study commands: dotted keys, YAML values, validated like the
file, errors naming the key."""

from __future__ import annotations

import pytest
import yaml

from coinlib import pipeline
from coinlib.core.params import PARAMS_DIR, ParamsError, load_params, parse_sets
from coinlib.study import cli

SMOKE = PARAMS_DIR / "smoke.yaml"
SPEC = PARAMS_DIR / "studies" / "sentiment.yaml"


def test_dotted_keys_nest_and_values_are_read_as_yaml():
    sets = ["train.lambda=10", "evaluate.tasks=[sst2, rte]", "run.mirror=null", "model.lora.r=8",
            "train.contrastive=false", "run.name=a=b", "train.lambda=20"]
    assert parse_sets(sets) == {"train": {"lambda": 20, "contrastive": False}, "evaluate": {"tasks": ["sst2", "rte"]},
                                "run": {"mirror": None, "name": "a=b"}, "model": {"lora": {"r": 8}}}


def test_overrides_merge_over_the_file_and_its_base():
    smoke = load_params(SMOKE)
    P = load_params(PARAMS_DIR / "lambda10.yaml", ["train.lambda=3", "evaluate.n_per_task=5", "model.lora.r=4"])
    assert (P.train.lambda_, P.evaluate.n_per_task, P.model.lora.r) == (3.0, 5, 4)
    assert P.run.name == "lambda10" and P.model.lora.alpha == smoke.model.lora.alpha  # the rest from the file chain


@pytest.mark.parametrize("sets, fragments", [
    (["train.lamda=10"], ["with --set train.lamda=10", "unknown key 'train.lamda'", "did you mean 'lambda'"]),
    (["trian.lambda=10"], ["unknown key 'trian'", "did you mean 'train'"]),
    (["train.lambda=-1"], ["train.lambda: Input should be greater than 0", "got -1"]),
    (["train.max_steps=lots"], ["train.max_steps", "got 'lots'"]),
    (["evaluate.tasks=[sst2, nope]"], ["unknown evaluation task 'nope'"]),
    (["train.lambda"], ["--set 'train.lambda': expected KEY=VALUE", "Fix"]),
    (["train..lambda=1"], ["expected KEY=VALUE with a dotted key"]),
    (["evaluate.tasks=[sst2"], ["value of evaluate.tasks is not valid YAML", "Fix"]),
    (["train=1", "train.lambda=2"], ["train is set to a value by an earlier --set"]),
])
def test_bad_overrides_name_the_key(sets, fragments):
    with pytest.raises(ParamsError) as err:
        load_params(SMOKE, sets)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("module, target", [("coinlib.train.trainer", "train"),
                                            ("coinlib.evaluate.runner", "run_evaluation")])
def test_train_and_evaluate_commands_apply_overrides(module, target, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(module)
    seen = []
    monkeypatch.setattr(mod, target, lambda P: seen.append(P))
    assert mod.main([str(SMOKE), "--set", "train.lambda=10", "--set", "evaluate.tasks=[rte]"]) == 0
    assert (seen[0].train.lambda_, seen[0].evaluate.tasks) == (10.0, ["rte"])
    with pytest.raises(SystemExit) as exit_info:
        mod.main([str(SMOKE), "--set", "train.lambda=0"])
    assert exit_info.value.code == 2 and "train.lambda: Input should be greater than 0" in capsys.readouterr().err
    assert len(seen) == 1


def test_pipeline_passes_the_overridden_values_to_every_notebook(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(pipeline, "_execute_or_explain", lambda nb, out, values, kernel: calls.append((nb, values)))
    assert pipeline.main([str(SMOKE), "--only", "02", "03", "--set", "train.max_steps=2",
                          "--set", f"run.output_root={tmp_path}"]) == 0
    assert [nb.name[:2] for nb, _ in calls] == ["02", "03"]
    assert all(values["train"]["max_steps"] == 2 and values["base"] is None for _, values in calls)
    assert pipeline.main([str(SMOKE), "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size" in capsys.readouterr().err and len(calls) == 2


def test_study_overrides_apply_to_the_recipe_of_every_arm(capsys):
    printed = {}
    for run in ("cit-s0", "coin-s0", "coin-xpos-s1:paper"):
        assert cli.main([str(SPEC), "--set", "train.lambda=10", "--set", "train.contrastive=true",
                           "--set", "evaluate.n_per_task=20", "--print-params", run]) == 0
        printed[run] = yaml.safe_load(capsys.readouterr().out)
    assert {r: p["train"]["lambda"] for r, p in printed.items()} == dict.fromkeys(printed, 10.0)
    assert {r: p["evaluate"]["n_per_task"] for r, p in printed.items()} == dict.fromkeys(printed, 20)
    # the arm's own overrides still win over the recipe's: CIT stays CIT
    assert [p["train"]["contrastive"] for p in printed.values()] == [False, True, True]
    assert cli.main([str(SPEC), "--set", "train.lambda=-1", "--plan"]) == 2
    err = capsys.readouterr().err
    assert "with --set train.lambda=-1" in err and "train.lambda: Input should be greater than 0" in err
