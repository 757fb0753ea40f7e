"""coinlib.evaluate.lmeval: exported lm-eval tasks + lm-eval's HF backend reproduce our runner instance by instance.

Differences between the two pipelines that exist and are tested here rather than hidden:
- lm-eval scores ``target_delimiter + choice``; we export ``target_delimiter: " "``, which is exactly the text our
  ``rank`` mode scores after the paper format (``" " + label``), so the scored continuation is the same string.
- lm-eval tokenizes context + continuation together and splits the tokens; we tokenize the label separately. With
  the SmolLM2 tokenizer the log-likelihoods agree to float precision (tested), so the split is the same.
- BOS: both use the tokenizer's default (SmolLM2 adds none).
- ``generate``: lm-eval always decodes 7 new tokens; our early stop may end sooner, so raw outputs differ in length
  while the parsed label is the same (tested both ways).
- lm-eval logs no token counts: ``summarize`` counts the label tokens POSIX needs with the logged model's tokenizer.

lm-eval runs as the ``lm_eval`` command a user types (a subprocess), on the exported tasks.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra `.[lmeval]`")

from coinlib.core.promptsets import load_prompt_set  # noqa: E402
from coinlib.core.tasks import get_task, load_task  # noqa: E402
from coinlib.evaluate import lmeval  # noqa: E402
from coinlib.evaluate.metrics import summarize  # noqa: E402
from coinlib.evaluate.scoring import label_continuation, parse_label, score_instruction  # noqa: E402

TASKS, GROUPS, N_INSTRUCTIONS, N_PER_TASK, LIMIT = ["sst2", "rte", "mnli"], ["clean", "checklist"], 2, 20, 4


LM_EVAL = Path(sys.executable).parent / "lm_eval"  # the console script the lmeval extra installs beside python


def run_lm_eval(model_dir, suite, log_dir, tasks, limit=LIMIT, batch_size=4) -> str:
    """``lm_eval --model hf --model_args ... --include_path suite --tasks ... --log_samples --output_path log_dir``,
    the command as a user types it; returns what it prints (the results tables)."""
    command = [str(LM_EVAL), "--model", "hf", "--model_args", lmeval.hf_model_args(str(model_dir)),
               "--include_path", str(suite), "--tasks", ",".join(tasks), "--limit", str(limit), "--device", "cpu",
               "--batch_size", str(batch_size), "--log_samples", "--output_path", str(log_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def our_predictions(model, tokenizer, mirror, mode, early_stop=True) -> pd.DataFrame:
    """Our runner's scoring on the same instances (the first LIMIT of each task's sample), as a predictions table."""
    prompts = load_prompt_set("coin_eval_prompts", mirror)
    rows = []
    for t in TASKS:
        frame = load_task(t, N_PER_TASK, mirror).iloc[:LIMIT]
        labels = get_task(t).labels
        for g in GROUPS:
            for i, instruction in enumerate(prompts[g][t][:N_INSTRUCTIONS]):
                scored = score_instruction(model, tokenizer, instruction, frame["content"].tolist(), labels,
                                           fmt="paper", mode=mode, batch_size=3, early_stop=early_stop)
                for (_, r), s in zip(frame.iterrows(), scored):
                    rows.append({"model": "base", "task": t, "group": g, "instruction_id": i,
                                 "instance_id": r["instance_id"], "gold": r["gold"], "prediction": s.prediction,
                                 "correct": s.prediction == r["gold"], "raw_output": s.raw_output,
                                 "label_scores": s.label_scores, "label_tokens": s.label_tokens})
    return pd.DataFrame(rows)


KEYS = ["model", "task", "group", "instruction_id", "instance_id"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mirror):
    """Tiny random Llama + real tokenizer saved to a folder, the suite exported, lm-eval run on both output types."""
    from coinlib.core.models import load_tokenizer, tiny_llama

    root = tmp_path_factory.mktemp("lmeval")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    model = tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    assert lmeval.main(["export", str(root / "suite"), "--n-per-task", str(N_PER_TASK), "--tasks", *TASKS,
                        "--groups", *GROUPS, "--n-instructions", str(N_INSTRUCTIONS), "--mirror", str(mirror)]) == 0
    printed = run_lm_eval(root / "model", root / "suite", root / "logs",
                          [lmeval.group_name("rank"), lmeval.group_name("generate")])
    (root / "lm_eval_stdout.txt").write_text(printed)
    return root, model, tokenizer


def test_lm_eval_command_prints_tables_with_their_headers(tiny_run):
    """lm-eval's results tables name their columns (pytablewriter without `headers` prints A, B, C, ...)."""
    root, _, _ = tiny_run
    printed = (root / "lm_eval_stdout.txt").read_text()
    header = re.compile(r"^\|\s*Tasks\s*\|Version\|Filter\|n-shot\|Metric\|.*\|\s*Value\s*\|.*\|Stderr\|$", re.M)
    assert header.search(printed), printed[:2000]
    assert re.search(r"^\|\s*Groups\s*\|Version\|Filter\|n-shot\|Metric\|", printed, re.M), printed[-2000:]
    assert not re.search(r"^\|\s*A\s*\|\s*B\s*\|\s*C\s*\|", printed, re.M)
    rows = [line for line in printed.splitlines() if line.startswith(f"|{lmeval.group_name('rank')} ")]
    assert rows and "|acc   |" in rows[0]


def test_export_layout(tiny_run, mirror):
    root, _, _ = tiny_run
    suite = root / "suite"
    units = len(TASKS) * len(GROUPS) * N_INSTRUCTIONS
    assert len(list((suite / "tasks").rglob("coin_rank__*.yaml"))) == units
    assert len(list((suite / "tasks").rglob("coin_generate__*.yaml"))) == units
    import yaml

    clean = yaml.safe_load((suite / "groups" / "coin_robustness_clean.yaml").read_text())
    assert clean["task"] == [f"coin_rank__{t}__clean__{i}" for t in TASKS for i in range(N_INSTRUCTIONS)]
    data = pd.read_json(suite / "data" / "mnli.jsonl", lines=True, dtype={"instance_id": str})
    expected = load_task("mnli", N_PER_TASK, mirror)
    assert data["instance_id"].tolist() == expected["instance_id"].tolist()
    assert data["choices"].iloc[0] == ["entailment", "neutral", "contradiction"]


def test_rank_matches_our_rank_mode(tiny_run, mirror, tmp_path):
    root, model, tokenizer = tiny_run
    ours = our_predictions(model, tokenizer, mirror, "rank")
    theirs, summary = lmeval.summarize_logs(root / "logs", tmp_path, mode="rank")
    assert len(theirs) == len(TASKS) * len(GROUPS) * N_INSTRUCTIONS * LIMIT
    both = theirs.merge(ours, on=KEYS, suffixes=("_lm", "_ours"), validate="1:1")
    assert len(both) == len(theirs)
    assert (both["prediction_lm"] == both["prediction_ours"]).all()
    for a, b in zip(both["label_scores_lm"], both["label_scores_ours"]):  # same log-likelihoods, not just argmax
        a, b = json.loads(a), json.loads(b)
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 2e-3 for k in a)
    # every metric of our evaluator, from lm-eval's logs, equals the one from our runner's predictions (POSIX too:
    # the label tokens are counted with the logged model's tokenizer), within the label scores' agreement above
    expected = summarize(ours.assign(instruction="", adapter=""))
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), expected.reset_index(drop=True), rtol=0, atol=2e-3)
    assert summary["posix"].notna().all() and summary["auc"].notna().any()
    assert (tmp_path / "predictions.parquet").is_file() and (tmp_path / "predictions.csv").is_file()
    assert pd.read_csv(tmp_path / "summary.csv").shape == summary.shape


def test_rank_continuation_is_lm_eval_target_delimiter_plus_label(tiny_run):
    root, _, _ = tiny_run
    sample = next((root / "logs").rglob("samples_coin_rank__rte__clean__0_*.jsonl")).read_text().splitlines()[0]
    args = json.loads(sample)["arguments"]
    assert [a["arg_1"] for a in args.values()] == [label_continuation(lab, "paper") for lab in get_task("rte").labels]
    assert [a["arg_1"] for a in args.values()] == [" entailment", " not_entailment"]
    assert all(a["arg_0"].endswith("### Response:") for a in args.values())


def test_generate_matches_our_generate_mode(tiny_run, mirror, tmp_path):
    root, model, tokenizer = tiny_run
    theirs, _ = lmeval.summarize_logs(root / "logs", tmp_path, mode="generate")
    full = our_predictions(model, tokenizer, mirror, "generate", early_stop=False)
    both = theirs.merge(full, on=KEYS, suffixes=("_lm", "_ours"), validate="1:1")
    assert len(both) == len(TASKS) * len(GROUPS) * N_INSTRUCTIONS * LIMIT
    assert (both["raw_output_lm"] == both["raw_output_ours"]).all()  # the same 7 greedy tokens
    assert (both["prediction_lm"] == both["prediction_ours"]).all()
    early = our_predictions(model, tokenizer, mirror, "generate", early_stop=True)
    both = theirs.merge(early, on=KEYS, suffixes=("_lm", "_ours"), validate="1:1")
    assert (both["prediction_lm"] == both["prediction_ours"]).all()
    # lm-eval's own acc comes from process_generate, i.e. our parser
    log = next((root / "logs").rglob("samples_coin_generate__sst2__clean__0_*.jsonl")).read_text().splitlines()
    for line in log:
        s = json.loads(line)
        assert s["acc"] == float(parse_label(s["resps"][0][0], s["doc"]["choices"]) == s["doc"]["gold"])


def test_summarize_cli_needs_a_mode_when_logs_hold_both(tiny_run, tmp_path, capsys):
    root, _, _ = tiny_run
    assert lmeval.main(["summarize", str(root / "logs"), "--out", str(tmp_path)]) == 2
    assert "both rank and generate" in capsys.readouterr().err
    assert lmeval.main(["summarize", str(root / "logs"), "--out", str(tmp_path), "--mode", "rank"]) == 0
    assert set(pd.read_parquet(tmp_path / "predictions.parquet")["model"]) == {"base"}


def test_posix_needs_the_tokenizer_and_says_why_it_is_missing(tiny_run, tmp_path, caplog):
    """Without the logged model's tokenizer POSIX is NaN with the reason and the fix; --tokenizer restores it."""
    root, _, _ = tiny_run
    _, summary = lmeval.summarize_logs(root / "logs", tmp_path / "with", mode="rank")
    logs = tmp_path / "logs"
    shutil.copytree(root / "logs", logs)
    for results in logs.rglob("results_*.json"):  # the model folder is gone (logs copied to another machine)
        data = json.loads(results.read_text())
        data["config"]["model_args"] = f"pretrained={tmp_path / 'gone'},dtype=float32"
        results.write_text(json.dumps(data))
    _, without = lmeval.summarize_logs(logs, tmp_path / "without", mode="rank")
    assert without["posix"].isna().all() and without["auc"].equals(summary["auc"])
    assert "posix is NaN" in caplog.text and "--tokenizer" in caplog.text
    assert lmeval.main(["summarize", str(logs), "--out", str(tmp_path / "fixed"), "--mode", "rank",
                        "--tokenizer", str(root / "model")]) == 0
    assert pd.read_csv(tmp_path / "fixed" / "summary.csv")["posix"].to_numpy() == pytest.approx(
        summary["posix"].to_numpy())


def test_model_args_name_the_offline_model_folder(tiny_dir, capsys):
    """The README's path: the offline alias resolves to the converted folder our runner loads (not the hub id)."""
    from coinlib.core.models import resolve_model

    args = lmeval.hf_model_args("smollm2-135m-instruct", adapter="runs/coin/adapter")
    parsed = lmeval._model_args(args)
    assert parsed == {"pretrained": resolve_model("smollm2-135m-instruct")[0], "dtype": "float32",
                      "peft": "runs/coin/adapter"}
    assert (Path(parsed["pretrained"]) / "config.json").is_file() and lmeval.model_label(args) == "coin"
    assert lmeval.hf_model_args("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16") == \
        "pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,dtype=bfloat16"
    assert lmeval.main(["model-args", str(tiny_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"pretrained={tiny_dir},dtype=float32"
    assert lmeval.main(["model-args", "no/such/model"]) == 2
    assert "neither an alias" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_prompt_set(tmp_path, capsys):
    assert lmeval.main(["export", str(tmp_path / "out"), "--prompt-set", "no_such_set"]) == 2
    err = capsys.readouterr().err
    assert "no_such_set" in err and "neither a known name" in err
    assert not (tmp_path / "out").exists()


def test_log_folder_without_sample_logs(tiny_run, tmp_path, capsys):
    root, _, _ = tiny_run
    logs = tmp_path / "logs"
    shutil.copytree(root / "logs", logs, ignore=shutil.ignore_patterns("samples_*"))  # lm_eval without --log_samples
    assert lmeval.main(["summarize", str(logs), "--out", str(tmp_path / "out"), "--mode", "rank"]) == 2
    assert "--log_samples" in capsys.readouterr().err
    assert lmeval.main(["summarize", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert lmeval.main(["summarize", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no lm-eval results_*.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_logs_from_other_tasks(tmp_path, capsys):
    run = tmp_path / "logs" / "model"
    run.mkdir(parents=True)
    results = {"config": {"model_args": "pretrained=x"},
               "configs": {"hellaswag": {"task": "hellaswag", "metadata": {"version": 1.0}}}}
    (run / "results_2026-01-01T00-00-00.json").write_text(json.dumps(results))
    (run / "samples_hellaswag_2026-01-01T00-00-00.jsonl").write_text("{}\n")
    assert lmeval.main(["summarize", str(tmp_path / "logs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no coinlib tasks" in err and "hellaswag" in err and "--include_path" in err


def test_model_label():
    assert lmeval.model_label("pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,dtype=float32") == "base"
    assert lmeval.model_label("pretrained=m,peft=runs/coin/adapter") == "coin"
    assert lmeval.model_label({"pretrained": "m", "peft": "/x/my_adapter/"}) == "my_adapter"
    assert lmeval.model_label("pretrained=m,lora_local_path=runs/coin2/adapter,data_parallel_size=2") == "coin2"


def test_template_renders_instruction_verbatim():
    from lm_eval.utils import apply_template

    instruction = "Is it {{positive}} or {% if %} 'negative'? "
    template = lmeval.doc_to_text_template(instruction)
    assert apply_template(template, {"content": "a {{b}} c"}) == instruction + "a {{b}} c" + "### Response:"
    with pytest.raises(lmeval.LmEvalError, match="Jinja raw marker"):
        lmeval.doc_to_text_template("x {% endraw %} y")
    with pytest.raises(lmeval.LmEvalError, match="carriage returns"):
        lmeval._check_template(lmeval.doc_to_text_template("a\r\nb "), "a\r\nb ", "c")


@pytest.mark.slow
def test_real_smollm2_agrees(mirror, tmp_path):
    """The same agreement on the real SmolLM2-135M-Instruct, one task, both output types."""
    from coinlib.core.models import load_model, load_tokenizer, resolve_model  # noqa: F401
    from coinlib.core.params import ModelParams

    model, tokenizer = load_model(ModelParams(name="smollm2-135m-instruct", dtype="float32"), device="cpu")
    model.eval().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    lmeval.export(tmp_path / "suite", n_per_task=N_PER_TASK, tasks=["sst2"], groups=["clean"], n_instructions=2,
                  mirror=mirror)
    run_lm_eval(tmp_path / "model", tmp_path / "suite", tmp_path / "logs",
                [lmeval.group_name("rank"), lmeval.group_name("generate")], limit=3)
    frame = load_task("sst2", N_PER_TASK, mirror).iloc[:3]
    prompts = load_prompt_set("coin_eval_prompts", mirror)["clean"]["sst2"][:2]
    for mode in ("rank", "generate"):
        theirs = lmeval.read_logs(tmp_path / "logs", mode=mode)
        for i, instruction in enumerate(prompts):
            ours = score_instruction(model, tokenizer, instruction, frame["content"].tolist(), get_task("sst2").labels,
                                     fmt="paper", mode=mode, early_stop=False)
            got = theirs[theirs["instruction_id"] == i].set_index("instance_id").loc[frame["instance_id"]]
            assert got["prediction"].tolist() == [s.prediction for s in ours]
            if mode == "generate":
                assert got["raw_output"].tolist() == [s.raw_output for s in ours]
