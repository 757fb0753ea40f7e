"""Fault injection: kills, damaged files and odd input either recover to the result of an undisturbed run or stop
with a message naming the file, key or line and the fix (issue 14). Tiny model, real mirror layout in tmp dirs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from entries_helper import make_entries
from safetensors.torch import load_file
from transformers import TrainerCallback

import coinlib.evaluate.runner as ev
from coinlib.core import models
from coinlib.core.params import ParamsError, load_params, load_params_or_exit, validate
from coinlib.core.promptsets import PromptSetError, load_prompt_set
from coinlib.core.sources import CorruptFileError
from coinlib.core.tasks import load_task
from coinlib.data import pairs
from coinlib.evaluate.scoring import score_instruction
from coinlib.train import trainer as train_mod

REPO = Path(__file__).resolve().parents[1]
COLA = "hf/nyu-mll__glue/cola/train.jsonl"
MIRROR_FILES = [COLA, "flan/templates_v1.json", "prompts/coin_eval_prompts.json"]


def copy_mirror(src: Path, dst: Path, files=MIRROR_FILES) -> Path:
    """The real mirror's layout with only ``files``, writable (the shared mirror is read-only)."""
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dst / rel)
    return dst


# ----------------------------------------------------------------------------------------------- training
def _train_params(tmp_path, name, **train):
    values = {"run": {"name": name, "output_root": str(tmp_path)},
              "train": {"max_steps": 4, "batch_size": 2, "micro_batch_pairs": 2, "save_steps": 2,
                        "logging_steps": 1, "report_to": [], "cutoff_len": 64, "save_total_limit": None, **train}}
    return validate(values)


def _fresh(tok):
    return models.tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, seed=0)


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


class _Kill(TrainerCallback):
    class Killed(RuntimeError):
        pass

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise self.Killed("killed at step 3")


def test_killed_while_saving_resumes_from_newest_complete_checkpoint(tmp_path, smol_tokenizer, caplog):
    data = make_entries(12)
    full = _train_params(tmp_path, "full")
    train_mod.train_on(full, data, _fresh(smol_tokenizer), smol_tokenizer)
    part = _train_params(tmp_path, "part")
    with pytest.raises(_Kill.Killed):
        train_mod.train_on(part, data, _fresh(smol_tokenizer), smol_tokenizer, callbacks=[_Kill()])
    ckpts = part.run_dir / "checkpoints"
    # killed while writing checkpoint-4: weights written, trainer_state.json not yet
    shutil.copytree(ckpts / "checkpoint-2", ckpts / "checkpoint-4")
    (ckpts / "checkpoint-4" / "trainer_state.json").unlink()
    # ... or while writing trainer_state.json itself
    shutil.copytree(ckpts / "checkpoint-2", ckpts / "checkpoint-3")
    state = ckpts / "checkpoint-3" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="coinlib.train.trainer"):
        train_mod.train_on(part, data, _fresh(smol_tokenizer), smol_tokenizer)
    moved = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert len(moved) == 2 and "checkpoint-4" in moved[0] and "checkpoint-3" in moved[1]
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4", "incomplete-checkpoint-3",
                                                      "incomplete-checkpoint-4"]
    a, b = _adapter(part.run_dir), _adapter(full.run_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert pd.read_csv(part.run_dir / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("damaged,finished", [("optimizer.pt", False), ("adapter_model.safetensors", True)])
def test_damaged_newest_checkpoint_is_set_aside_naming_it(tmp_path, smol_tokenizer, caplog, damaged, finished):
    """Issue 24.2: a checkpoint file cut short after saving (an interrupted run's optimizer state, or a finished
    run's weights with its adapter/ gone) is moved aside with its path and file named; training falls back to the
    previous checkpoint and ends where an undisturbed run does."""
    data = make_entries(12)
    full = _train_params(tmp_path, "full", save_steps=1)
    train_mod.train_on(full, data, _fresh(smol_tokenizer), smol_tokenizer)
    part = _train_params(tmp_path, "part", save_steps=1)
    if finished:
        train_mod.train_on(part, data, _fresh(smol_tokenizer), smol_tokenizer)
        shutil.rmtree(part.run_dir / "adapter")
    else:
        with pytest.raises(_Kill.Killed):
            train_mod.train_on(part, data, _fresh(smol_tokenizer), smol_tokenizer, callbacks=[_Kill()])
    newest = part.run_dir / "checkpoints" / ("checkpoint-4" if finished else "checkpoint-2")
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="coinlib.train.trainer"):
        train_mod.train_on(part, data, _fresh(smol_tokenizer), smol_tokenizer)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint {newest} is damaged ({damaged}: " in warned and f"damaged-{newest.name}" in warned
    assert (newest.parent / f"damaged-{newest.name}" / damaged).is_file()
    a, b = _adapter(part.run_dir), _adapter(full.run_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("first,second,key", [({"max_steps": 2}, {"max_steps": 3}, "train.max_steps"),
                                              ({"max_steps": -1, "epochs": 1}, {"max_steps": -1, "epochs": 2},
                                               "train.epochs")])
def test_changed_schedule_length_on_resume_is_refused(tmp_path, smol_tokenizer, first, second, key):
    data = make_entries(4)
    train_mod.train_on(_train_params(tmp_path, "r", **first), data, _fresh(smol_tokenizer), smol_tokenizer)
    before = _adapter(tmp_path / "r")
    with pytest.raises(ValueError, match=rf"different {key} \(they set the learning-rate schedule.*new run\.name.*"
                                         r"delete .*checkpoints"):
        train_mod.train_on(_train_params(tmp_path, "r", **second), data, _fresh(smol_tokenizer), smol_tokenizer)
    after = _adapter(tmp_path / "r")
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was trained or overwritten


# ----------------------------------------------------------------------------------------------- data
def _data_params(out, mirror, **data):
    return validate({"run": {"name": "t", "output_root": str(out), "mirror": str(mirror)},
                     "data": {"tasks": ["cola"], "size": 24, **data}})


def test_built_data_is_keyed_on_source_digest_and_format_version(tmp_path, mirror, monkeypatch):
    m = copy_mirror(mirror, tmp_path / "mirror")
    P = _data_params(tmp_path / "runs", m)
    first = pairs.load_or_build(P, progress=False).to_list()
    report = json.loads((P.data_dir / "build_report.json").read_text())
    assert report["source"] == "mirror" and report["format_version"] == pairs.DATA_FORMAT_VERSION
    assert len(report["source_digest"]) == 16

    # the same mirror file with other rows (a re-copied or corrupted mirror): rebuilt, never reused
    path = m / COLA
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edited = [{**r, "sentence": r["sentence"].upper()} for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in edited))
    rebuilt = pairs.load_or_build(P, progress=False).to_list()
    assert rebuilt != first
    fresh_m = copy_mirror(m, tmp_path / "fresh-mirror")  # an undisturbed build from the edited files
    fresh = pairs.load_or_build(_data_params(tmp_path / "fresh", fresh_m), progress=False).to_list()
    assert rebuilt == fresh
    assert json.loads((P.data_dir / "build_report.json").read_text())["source_digest"] != report["source_digest"]

    # a new data format version: rebuilt
    monkeypatch.setattr(pairs, "DATA_FORMAT_VERSION", pairs.DATA_FORMAT_VERSION + 1)
    pairs.load_or_build(P, progress=False)
    assert json.loads((P.data_dir / "build_report.json").read_text())["format_version"] == pairs.DATA_FORMAT_VERSION


def test_built_data_follows_the_mirror_files_not_the_mirror_folder(tmp_path, mirror, monkeypatch, caplog):
    """The same files in another folder reuse the built data; a mirror whose files differ rebuilds it."""
    m = copy_mirror(mirror, tmp_path / "mirror")
    P = _data_params(tmp_path / "runs", m)
    first = pairs.load_or_build(P, progress=False).to_list()
    report = (P.data_dir / "build_report.json").read_text()

    (tmp_path / "elsewhere").mkdir()
    moved = _data_params(tmp_path / "runs", shutil.move(m, tmp_path / "elsewhere" / "mirror"))
    assert moved.data_dir == P.data_dir
    build = pairs.build
    monkeypatch.setattr(pairs, "build", lambda *a, **k: pytest.fail("rebuilt from a moved mirror"))
    with caplog.at_level(logging.WARNING, logger="coinlib.data.pairs"):
        assert pairs.load_or_build(moved, progress=False).to_list() == first
    assert not caplog.records and (P.data_dir / "build_report.json").read_text() == report

    changed = copy_mirror(tmp_path / "elsewhere" / "mirror", tmp_path / "changed")
    rows = [json.loads(line) for line in (changed / COLA).read_text().splitlines()]
    (changed / COLA).write_text("".join(json.dumps({**r, "sentence": r["sentence"].upper()}) + "\n" for r in rows))
    monkeypatch.setattr(pairs, "build", build)
    with caplog.at_level(logging.WARNING, logger="coinlib.data.pairs"):
        again = pairs.load_or_build(_data_params(tmp_path / "runs", changed), progress=False).to_list()
    assert "rebuilding" in caplog.text and "source_digest" in caplog.text and again != first


@pytest.mark.parametrize("name", ["entries.jsonl", "dataset/data-00000-of-00001.arrow"])
def test_damaged_built_data_is_rebuilt_naming_the_file(tmp_path, mirror, caplog, name):
    """Issue 24.5: a built file cut short after the build is found against the build report and rebuilt."""
    P = _data_params(tmp_path / "runs", copy_mirror(mirror, tmp_path / "mirror"))
    first = pairs.load_or_build(P, progress=False).to_list()
    whole = (P.data_dir / "entries.jsonl").read_bytes()
    path = P.data_dir / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="coinlib.data.pairs"):
        again = pairs.load_or_build(P, progress=False).to_list()
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{path} is {path.stat().st_size // 2} bytes, its build report says" in warned
    assert again == first and (P.data_dir / "entries.jsonl").read_bytes() == whole
    caplog.clear()
    pairs.load_or_build(P, progress=False)  # intact now: reused without a word
    assert not caplog.records


def test_truncated_mirror_jsonl_names_file_line_and_fix(tmp_path, mirror):
    m = copy_mirror(mirror, tmp_path / "mirror")
    path = m / COLA
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:6]) + lines[6][: len(lines[6]) // 2])  # copy cut short inside line 7
    with pytest.raises(CorruptFileError, match=rf"{path}: line 7 is not valid JSON.*Fix: copy the file again"):
        pairs.load_or_build(_data_params(tmp_path / "runs", m), progress=False)
    # the evaluation's reader says the same
    sst2 = copy_mirror(mirror, tmp_path / "m2", ["hf/nyu-mll__glue/sst2/validation.jsonl"])
    val = sst2 / "hf/nyu-mll__glue/sst2/validation.jsonl"
    val.write_bytes(val.read_bytes()[:-30])
    n_lines = len(val.read_bytes().splitlines())
    with pytest.raises(CorruptFileError, match=rf"{val}: line {n_lines} is not valid JSON"):
        load_task("sst2", 3, str(sst2))
    # and a truncated template file
    tpl = m / "flan/templates_v1.json"
    tpl.write_bytes(tpl.read_bytes()[:1000])
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptFileError, match=rf"{tpl}: not valid JSON.*pinned origin google-research/FLAN"):
        pairs.load_or_build(_data_params(tmp_path / "runs", m), progress=False)


def test_flan_template_ignoring_the_input_is_excluded_with_reason(tmp_path, mirror):
    m = copy_mirror(mirror, tmp_path / "mirror")
    tpl = m / "flan/templates_v1.json"
    doc = json.loads(tpl.read_text())
    cola = doc["tasks"]["cola"]["templates"]
    cola.append({"input": "Is the sentence acceptable?\n\n{options_}", "target": "{answer}",
                 "fields": ["answer", "options_"], "has_options": True})
    bad_id = len(cola) - 1
    tpl.write_text(json.dumps(doc))
    P = _data_params(tmp_path / "runs", m, size=60)
    entries = pairs.load_or_build(P, progress=False).to_list()
    report = json.loads((P.data_dir / "build_report.json").read_text())
    reasons = {(x["task"], x["template_id"]): x["reason"] for x in report["excluded_templates"]}
    assert "input uses none of the instance's fields ({sentence})" in reasons[("cola", bad_id)]
    assert all(bad_id not in (e["template_id"], e["pos_template_id"]) for e in entries)
    assert all(e["prompt"] != e["neg_prompt"] for e in entries)


# ----------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("text", ["", "# nothing set yet\n", "{}\n"])
def test_empty_parameter_file_is_rejected(tmp_path, text, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=rf"{path}: the parameter file is empty\. Fix: give at least `run: "):
        load_params(path)
    with pytest.raises(SystemExit) as exit_info:
        load_params_or_exit(path)
    assert exit_info.value.code == 2 and "is empty" in capsys.readouterr().err


def _assert_refused_on_load(tmp_path, text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    for fragment in [str(path), *fragments]:
        assert fragment in str(err.value)


@pytest.mark.parametrize("text,fragments", [
    pytest.param("train: {lambda: .inf}\n", ["train.lambda: Input should be a finite number"], id="lambda-inf"),
    pytest.param("train: {epochs: .inf}\n", ["train.epochs: Input should be a finite number"], id="epochs-inf"),
    pytest.param("train: {max_steps: 0}\n", ["train.max_steps: 0 is neither", "-1"], id="max-steps-0"),
    pytest.param("train: {max_steps: -5}\n", ["train.max_steps: -5 is neither"], id="max-steps-negative"),
    pytest.param("run: {name: ../../x}\n", ["run.name: run name '../../x' is not a plain name"], id="name-up"),
    pytest.param("run: {name: /tmp/x}\n", ["run.name: run name '/tmp/x' is not a plain name"], id="name-absolute"),
    pytest.param("run: {name: ''}\n", ["run.name: run name '' is not a plain name"], id="name-empty"),
    pytest.param("run: {seed: -1}\n", ["run.seed: Input should be greater than or equal to 0"], id="seed"),
    pytest.param("analysis: {lambda_runs: {'inf': x}}\n", ["analysis.lambda_runs: key 'inf' is not a finite"],
                 id="sweep-inf"),
])
def test_values_that_would_silently_change_the_experiment_are_refused(tmp_path, text, fragments):
    """Issue 24.3: an infinite lambda trains CIT, max_steps <= 0 a full epoch, a path as run name writes outside
    runs/ (or into it): each is refused when the file is loaded, naming the key."""
    _assert_refused_on_load(tmp_path, text, fragments)


@pytest.mark.parametrize("text,fragments", [
    pytest.param("train: {lr_scheduler: cosin}\n", ["train.lr_scheduler: Input should be 'linear', 'cosine'"],
                 id="lr-scheduler"),
    pytest.param("train: {lr_scheduler: warmup_stable_decay}\n", ["train.lr_scheduler"], id="needs-arguments"),
    pytest.param("train: {report_to: [tensorbord]}\n", ["train.report_to.0: Input should be 'tensorboard'"],
                 id="report-to"),
    pytest.param("run: {name: x}\ntrain:\n  lambda: 10\n  max_steps: 3\n  lambda: 100\n",
                 ["line 5, column 3: key 'lambda' is given twice in one mapping (first on line 3). Fix: remove one"],
                 id="duplicate-key"),
    pytest.param("run: {name: x}\nrun: {name: y}\n", ["line 2, column 1: key 'run' is given twice"],
                 id="duplicate-section"),
])
def test_choices_and_duplicate_keys_are_refused_when_the_file_is_loaded(tmp_path, text, fragments):
    """Issue 24.4: what transformers would refuse after the data build and the model load, and a key given twice
    (the last would win silently), stop the load naming the file, key and line."""
    _assert_refused_on_load(tmp_path, text, fragments)


def test_resume_refusal_names_the_yaml_key(tmp_path, smol_tokenizer):
    """Issue 24.4: the refusal names ``train.lambda`` (the key to edit), not the attribute ``lambda_``."""
    data = make_entries(4)
    train_mod.train_on(_train_params(tmp_path, "r", max_steps=2, **{"lambda": 10}), data, _fresh(smol_tokenizer),
                       smol_tokenizer)
    with pytest.raises(ValueError, match=r"different train\.lambda\. Fix") as err:
        train_mod.train_on(_train_params(tmp_path, "r", max_steps=2, **{"lambda": 100}), data, _fresh(smol_tokenizer),
                           smol_tokenizer)
    assert "lambda_" not in str(err.value)


# ----------------------------------------------------------------------------------------------- evaluation
def test_prompt_file_with_placeholders_is_rejected_naming_where(tmp_path):
    path = tmp_path / "prompts.yaml"
    good = "Is this review positive or negative? "
    bad = "Classify the sentiment as 'positive' or 'negative':\nQuestion:{content}\nAnswer:"
    path.write_text(yaml.safe_dump({"clean": {"sst2": [good]}, "checklist": {"sst2": [good, bad]}}))
    with pytest.raises(PromptSetError, match=rf"{path}: invalid prompt set: group 'checklist', task 'sst2', "
                                             r"instruction 1 .*Question:\{content\}.* contains the placeholder\(s\) "
                                             r"\{content\}.*Fix: remove them"):
        load_prompt_set(path)
    path.write_text(yaml.safe_dump({"clean": {"rte": ["Does {premise} entail it? {}"]}}))
    with pytest.raises(PromptSetError, match=r"'rte', instruction 0 .*\{premise\}, \{\}"):
        load_prompt_set(path)
    P = validate({"run": {"name": "t", "output_root": str(tmp_path)},
                  "evaluate": {"prompt_set": str(path), "tasks": ["rte"], "groups": ["clean"]}})
    with pytest.raises(PromptSetError, match=str(path)):
        ev.run_evaluation(P, rank=0, world_size=1)
    # literal braces that are not placeholders stay allowed
    path.write_text(yaml.safe_dump({"clean": {"rte": ["Answer with one of {entailment, not_entailment}."]}}))
    assert load_prompt_set(path)["clean"]["rte"] == ["Answer with one of {entailment, not_entailment}."]




def _eval_values(tiny_dir, out, mirror):
    return {"base": "smoke.yaml", "run": {"name": "t", "output_root": str(out), "mirror": str(mirror)},
            "model": {"name": str(tiny_dir)},
            "evaluate": {"tasks": ["sst2", "rte"], "n_per_task": 3, "groups": ["clean", "checklist"],
                         "n_instructions": 2, "scoring": "rank", "batch_size": 2, "adapters": []}}


def test_unreadable_cache_units_are_recomputed_with_a_warning(tiny_dir, tmp_path, mirror, caplog):
    P = validate(_eval_values(tiny_dir, tmp_path, mirror))
    reference = ev.run_evaluation(P, rank=0, world_size=1).predictions
    units = sorted((P.run_dir / "eval" / "cache").rglob("*.parquet"))
    assert len(units) == 8
    cut, empty = units[1], units[6]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # killed mid-copy / disk full
    empty.write_bytes(b"")
    calls = []

    def counting(model, tok, instruction, *args, **kwargs):
        calls.append(instruction)
        return score_instruction(model, tok, instruction, *args, **kwargs)

    with caplog.at_level(logging.WARNING, logger="coinlib.evaluate.runner"):
        again = ev.run_evaluation(P, rank=0, world_size=1, scorer=counting).predictions
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert str(cut) in warned and str(empty) in warned and "recomputed" in warned
    assert len(calls) == 2
    pd.testing.assert_frame_equal(again, reference)
    assert not list((P.run_dir / "eval" / "cache").rglob("*.tmp"))


SST2 = "hf/nyu-mll__glue/sst2/validation.jsonl"


def test_changed_evaluation_data_is_evaluated_afresh(tiny_dir, tmp_path, mirror):
    """Issue 24.1: the same task name over other rows (labels flipped, text changed) never reuses a cached unit."""
    m = copy_mirror(mirror, tmp_path / "mirror", [SST2, "prompts/coin_eval_prompts.json"])
    values = _eval_values(tiny_dir, tmp_path / "runs", m)
    values["evaluate"].update(tasks=["sst2"], groups=["clean"])
    P = validate(values)
    first = ev.run_evaluation(P, rank=0, world_size=1).predictions
    path = m / SST2
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "label": 1 - r["label"], "sentence": r["sentence"] + " !"}) + "\n"
                            for r in rows))
    calls = []

    def counting(model, tok, instruction, *args, **kwargs):
        calls.append(instruction)
        return score_instruction(model, tok, instruction, *args, **kwargs)

    again = ev.run_evaluation(P, rank=0, world_size=1, scorer=counting).predictions
    assert len(calls) == 2  # both units scored again
    new = load_task("sst2", 3, str(m)).set_index("instance_id")
    assert (again["gold"].to_numpy() == new.loc[again["instance_id"], "gold"].to_numpy()).all()
    assert (again["gold"] != first["gold"]).all()


def test_two_concurrent_evaluations_of_one_run_equal_a_single_run(tiny_dir, tmp_path, mirror):
    values = _eval_values(tiny_dir, tmp_path / "both", mirror)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(values), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "coinlib.evaluate", str(tmp_path / "p.yaml")], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    errors = [p.communicate(timeout=600)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    single = ev.run_evaluation(validate(_eval_values(tiny_dir, tmp_path / "single", mirror)), rank=0, world_size=1)
    out = tmp_path / "both" / "t" / "eval"
    pd.testing.assert_frame_equal(pd.read_parquet(out / "predictions.parquet"), single.predictions)
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"),
                                  pd.read_csv(tmp_path / "single" / "t" / "eval" / "summary.csv"))
    leftovers = [p for p in (tmp_path / "both").rglob("*") if ".tmp" in p.name or p.name.endswith(".unreadable")]
    assert leftovers == []
    assert len(list((out / "cache").rglob("*.parquet"))) == 8


# ----------------------------------------------------------------------------------------------- study
_KILLED_ATTEMPT = """
import sys, time
from pathlib import Path
from coinlib.study import driver, spec as study_spec

def train(P, callbacks=None):  # a training that writes a checkpoint, then runs until it is killed
    (P.run_dir / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    Path(sys.argv[2]).touch()
    time.sleep(600)

driver.CLOCK_BEAT_S, driver.train = 0.1, train
spec = study_spec.load_spec(sys.argv[1])
driver.Driver(spec)._train(study_spec.expand(spec)[0])
"""


def test_resumed_training_commits_the_time_of_every_attempt(tmp_path, monkeypatch):
    """Issue 24.6: a training killed (kill -9) and resumed commits the wall time of both attempts, not the last."""
    from coinlib.core.params import PARAMS_DIR
    from coinlib.study import driver, store
    from coinlib.study import spec as study_spec

    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(
        {"base": str(PARAMS_DIR / "study-sentiment.yaml"), "run": {"output_root": str(tmp_path / "runs")}}))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "st", "params": "recipe.yaml", "committed_root": str(tmp_path / "committed"), "seeds": [0],
        "arms": {"cit": {"label": "CIT", "train": {"contrastive": False}}}, "formats": ["train"], "base_model": False}))
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_ATTEMPT, str(spec_path), str(started)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    time.sleep(1.5)
    proc.kill()  # SIGKILL: nothing of the attempt runs to its end
    proc.wait()
    monkeypatch.setattr(driver, "train", lambda P, callbacks=None: None)  # the resumed attempt: done at once
    spec = study_spec.load_spec(spec_path)
    driver.Driver(spec, log=lambda _: None)._train(study_spec.expand(spec)[0])
    meta = json.loads((store.stage_dir(spec, "cit-s0", "train") / "stage.json").read_text())
    assert meta["wall_s"] >= 1.4


# ----------------------------------------------------------------------------------------------- committed files
#: A path that names one machine: a home folder, a checkout's location, a mount (not /usr/bin/env or /tmp).
MACHINE_PATH = re.compile(r"(?<![\w.~:/-])/(?:home|root|work|Users|mnt|scratch|srv)/[^\s'\"<>()\[\],]*")


def _machine_paths(text: str) -> set[str]:
    found = set(MACHINE_PATH.findall(text))
    return found | {p for p in (str(REPO), str(Path.home()) + "/") if len(p) > 1 and p in text}


def test_committed_outputs_record_repository_relative_paths(tmp_path):
    """Issue 24.7: every tracked file (text, CSV and parquet content) is free of absolute machine paths, and the
    evaluation writes an adapter inside the checkout as a repository-relative path."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    problems = []
    for rel in subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0"):
        rel = rel.decode()
        path = REPO / rel
        if not rel or rel.startswith("tests/") or path.suffix in (".png", ".pdf") or not path.is_file():
            continue  # tests hold such paths as data; images carry none
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            text = "\n".join(frame[c].astype(str).str.cat(sep="\n") for c in frame.columns)
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
        problems += [f"{rel}: {p}" for p in sorted(_machine_paths(text))[:3]]
    assert problems == [], "tracked files hold absolute machine paths:\n" + "\n".join(problems)

    unit = ev.Unit("m", "sst2", "clean", 0, "Say it.")
    spec = ev.ModelSpec("m", str(REPO / "runs" / "some-run" / "adapter"))
    frame = pd.DataFrame({"instance_id": ["0"], "gold": ["positive"]})
    scored = [type("Scored", (), {"prediction": "positive", "raw_output": "", "label_scores": "{}"})()]
    ev._write_unit(unit, spec, unit.instruction, frame, scored, tmp_path)
    assert ev.read_unit(unit.path(tmp_path))["adapter"].tolist() == ["runs/some-run/adapter"]


# ----------------------------------------------------------------------------------------------- pipeline
def test_pipeline_kernels_import_the_checkout_they_run_from(tmp_path, monkeypatch):
    """Issue 24.8: a kernel started for this checkout imports its coinlib, even when another checkout's coinlib comes
    first for a plain ``import`` (a virtualenv shared with, and installed editable from, another checkout)."""
    import nbformat

    from coinlib import pipeline

    other = tmp_path / "other-checkout"
    (other / "coinlib").mkdir(parents=True)
    (other / "coinlib" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": pipeline.KERNEL_NAME, "language": "python",
                                                           "display_name": "COIN (.venv)"}})
    nb.cells = [nbformat.v4.new_code_cell("import coinlib\nprint(coinlib.__file__)")]
    nbformat.write(nb, tmp_path / "which.ipynb")
    pipeline.execute(tmp_path / "which.ipynb", tmp_path / "which-out.ipynb")
    printed = nbformat.read(tmp_path / "which-out.ipynb", as_version=4).cells[0].outputs[0].text.strip()
    assert Path(printed) == REPO / "coinlib" / "__init__.py"


# ----------------------------------------------------------------------------------------------- models
def test_hub_model_offline_fails_at_once_with_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailable, match=r"'nobody/no-such-model'.*HF_HUB_OFFLINE is set\. Fix:"):
        models.load_tokenizer("nobody/no-such-model")
    with pytest.raises(models.ModelUnavailable, match=r"'nobody/no-such-model'.*HF_HUB_OFFLINE is set\. Fix:"):
        models.load_model(validate({"run": {"name": "t"}, "model": {"name": "nobody/no-such-model"}}).model)


@pytest.fixture()
def unreachable_hub(monkeypatch):
    """Online mode whose every HTTP request fails to connect; yields the list of requests made."""
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    requests = []  # those for the model (huggingface_hub also asks for its own metadata now and then)

    def refuse(request):
        if "no-such-model" in str(request.url):
            requests.append(str(request.url))
        raise httpx2.ConnectError("connection refused (test)", request=request)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # a retry loop would not wait, only repeat
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    yield requests
    set_client_factory(default_client_factory)


def test_unreachable_hub_fails_after_one_request(unreachable_hub):
    with pytest.raises(models.ModelUnavailable,
                       match=r"cannot load model 'nobody/no-such-model' \(ConnectError: .*\)\. Fix: check the name"):
        models.load_tokenizer("nobody/no-such-model")
    assert len(unreachable_hub) == 1 and unreachable_hub[0].endswith("nobody/no-such-model/resolve/main/config.json")
    unreachable_hub.clear()
    with pytest.raises(models.ModelUnavailable, match="ConnectError"):
        models.load_model(validate({"run": {"name": "t"}, "model": {"name": "nobody/no-such-model"}}).model)
    assert len(unreachable_hub) == 1
