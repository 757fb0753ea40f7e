"""The robustness suite as lm-evaluation-harness tasks, and our metrics from its sample logs.

    python -m coinlib.evaluate.lmeval export OUT_DIR [--prompt-set NAME|FILE] [--n-per-task N] [--sample S] [--groups ...]
    python -m coinlib.evaluate.lmeval model-args smollm2-135m-instruct [--adapter runs/RUN/adapter]  # -> ARGS
    lm_eval --model hf --model_args ARGS --include_path OUT_DIR --tasks coin_robustness \\
        --log_samples --output_path LOG_DIR
    python -m coinlib.evaluate.lmeval summarize LOG_DIR --out DIR

``export`` writes one lm-eval task per (GLUE task, instruction group, instruction) and output type:
``coin_rank__<task>__<group>__<i>`` (``multiple_choice``: log-likelihood of each label word after the input, our
``rank`` mode) and ``coin_generate__<task>__<group>__<i>`` (``generate_until``: greedy, 7 new tokens, scored by
our label parser, the paper's ``generate`` mode), plus the groups ``coin_robustness`` / ``coin_robustness_generate``
(everything) and ``coin_robustness_<group>`` / ``coin_robustness_<group>_generate`` (one instruction group). Inputs
are the paper's format (instruction + content + "### Response:"); instances are the evaluation sample of
:func:`coinlib.core.tasks.load_task`, written once per task as local JSONL (lm-eval never reaches the hub).
``model-args`` prints the HF backend's ``--model_args`` for a model as ``model.name`` names it (the offline alias
resolves to its converted local folder, so lm-eval scores the weights our runner scores). ``summarize`` turns
``--log_samples`` output into the ``predictions`` and ``summary`` tables of ``python -m coinlib.evaluate``; lm-eval
logs no token counts, so the label tokens POSIX divides by are counted with the logged model's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from coinlib.core.fileio import atomic_write, atomic_write_text
from coinlib.core.formats import format_input, paper_prompt
from coinlib.core.groups import EVAL_GROUPS
from coinlib.core.models import ModelUnavailable, load_tokenizer, resolve_model
from coinlib.core.promptsets import PromptSetError, load_prompt_set, select
from coinlib.core.tasks import SAMPLES, get_task, load_task, task_names
from coinlib.evaluate.metrics import BASE_LABEL, summarize as summarize_predictions
from coinlib.evaluate.runner import PREDICTION_COLUMNS
from coinlib.evaluate.scoring import label_continuation, label_token_ids, parse_label

log = logging.getLogger(__name__)

MODES = {"rank": "multiple_choice", "generate": "generate_until"}
SUITE = "coin_robustness"
MAX_NEW_TOKENS = 7
_RAW = ("{% raw %}", "{% endraw %}")


class LmEvalError(ValueError):
    """Export or summary cannot proceed; the message names the problem and the fix."""


# ------------------------------------------------------------------------------------------------ export
def task_name(mode: str, task: str, group: str, instruction_id: int) -> str:
    """lm-eval task name of one unit (groups outside ``[A-Za-z0-9_]`` are sanitised; metadata keeps the name)."""
    return f"coin_{mode}__{task}__{_safe(group)}__{instruction_id}"


def group_name(mode: str, group: str | None = None) -> str:
    """lm-eval group of every unit of ``mode`` (``group`` None) or of one instruction group."""
    name = SUITE if group is None else f"{SUITE}_{_safe(group)}"
    return name if mode == "rank" else f"{name}_generate"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def doc_to_text_template(instruction: str) -> str:
    """Jinja template lm-eval renders into the paper's input for a doc with a ``content`` field."""
    if any(marker in instruction for marker in _RAW):
        raise LmEvalError(f"instruction {instruction!r} contains a Jinja raw marker; it cannot be exported verbatim")
    return paper_prompt(f"{_RAW[0]}{instruction}{_RAW[1]}{{{{content}}}}")


def _check_template(template: str, instruction: str, content: str) -> None:
    """Render ``template`` as lm-eval does and require exactly our input (e.g. Jinja rewrites "\\r\\n")."""
    try:
        from lm_eval.utils import apply_template
    except ImportError as err:
        raise LmEvalError("lm-eval is not installed. Fix: pip install -c constraints.txt -e '.[lmeval]'") from err
    got, want = apply_template(template, {"content": content}), format_input(instruction, content, "paper")
    if got != want:
        raise LmEvalError(f"lm-eval would render instruction {instruction!r} as {got!r}, not {want!r}. "
                          "Fix: remove carriage returns or other characters Jinja rewrites from the prompt set.")


def _task_config(mode: str, task: str, group: str, i: int, instruction: str, data_file: Path) -> dict:
    cfg = {
        "task": task_name(mode, task, group, i),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
        "test_split": "test",
        "output_type": MODES[mode],
        "doc_to_text": doc_to_text_template(instruction),
        "metadata": {"version": 1, "coin_task": task, "coin_group": group, "coin_instruction_id": i,
                     "coin_instruction": instruction, "coin_mode": mode},
    }
    if mode == "rank":  # lm-eval scores target_delimiter + choice: " label", as rank mode does after the paper format
        cfg |= {"doc_to_choice": "choices", "doc_to_target": "label", "target_delimiter": label_continuation("", "paper"),
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    else:  # only EOS stops generation; process_results parses the label with coinlib's parser
        cfg |= {"doc_to_target": "gold", "process_results": "!function utils.process_generate",
                "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS},
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    return cfg


def _yaml(cfg: dict) -> str:
    """YAML with ``!function`` tags unquoted (lm-eval resolves them relative to the file)."""
    import yaml

    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1 << 20)
    return re.sub(r"""(['"])!function ([\w.]+)\1""", r"!function \2", text)


UTILS = '''"""Written by `python -m coinlib.evaluate.lmeval export`: lm-eval's hook into coinlib's label parser."""

from coinlib.evaluate.lmeval import process_generate  # noqa: F401
'''


def process_generate(doc: dict, results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` of generate tasks: correct when our parser (with the task's accepted answers)
    finds the gold label word."""
    return {"acc": float(parse_label(results[0], get_task(doc["task"])) == doc["gold"])}


def export(out_dir: str | Path, prompt_set: str = "coin_eval_prompts", n_per_task: int = 300,
           groups: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
           n_instructions: int | None = None, mirror: str | Path | None = "auto", sample: str = "shared") -> list[str]:
    """Write the task folder for ``lm_eval --include_path out_dir``; returns the unit task names (rank first).
    ``sample`` is ``evaluate.sample`` (``shared`` or ``reference``, :func:`coinlib.core.tasks.eval_sample`)."""
    groups, tasks = list(groups or EVAL_GROUPS), list(tasks or task_names())
    for t in tasks:
        get_task(t)
    prompts = select(load_prompt_set(prompt_set, mirror), groups, tasks, n_instructions)
    out = Path(out_dir)
    names: dict[str, dict[str | None, list[str]]] = {m: {None: [], **{g: [] for g in groups}} for m in MODES}
    for t in tasks:
        frame = load_task(t, n_per_task, mirror, sample)
        labels = list(get_task(t).labels)
        rows = frame.assign(choices=[labels] * len(frame), task=t)[
            ["instance_id", "content", "label", "gold", "choices", "task"]]
        data_file = out / "data" / f"{t}.jsonl"
        atomic_write(data_file, lambda tmp: rows.to_json(tmp, orient="records", lines=True, force_ascii=False))
        for g in groups:
            for i, instruction in enumerate(prompts[g][t]):
                _check_template(doc_to_text_template(instruction), instruction, rows["content"].iloc[0])
                for mode in MODES:
                    cfg = _task_config(mode, t, g, i, instruction, data_file)
                    atomic_write_text(out / "tasks" / t / f"{cfg['task']}.yaml", _yaml(cfg))
                    names[mode][None].append(cfg["task"])
                    names[mode][g].append(cfg["task"])
    for t in tasks:  # lm-eval resolves `!function utils.x` beside each task file
        atomic_write_text(out / "tasks" / t / "utils.py", UTILS)
    for mode, by_group in names.items():
        for g, members in by_group.items():
            cfg = {"group": group_name(mode, g), "task": members,
                   "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
                   "metadata": {"version": 1}}
            atomic_write_text(out / "groups" / f"{cfg['group']}.yaml", _yaml(cfg))
    return names["rank"][None] + names["generate"][None]


def hf_model_args(model: str, adapter: str | None = None, dtype: str = "float32", revision: str | None = None) -> str:
    """``--model_args`` of lm-eval's HF backend for ``model`` as ``model.name`` accepts it (offline alias, folder, hub
    id; :func:`coinlib.core.models.resolve_model`), with an optional LoRA adapter folder."""
    path, gguf, rev = resolve_model(model, revision)
    if gguf:
        raise LmEvalError(f"model {model!r} is a GGUF file; lm-eval's HF backend needs a model folder or hub id. "
                          "Fix: convert it once (the offline alias does) or give a folder.")
    args = {"pretrained": path, "dtype": dtype, "revision": rev, "peft": adapter}
    if any("," in str(v) for v in args.values() if v):
        raise LmEvalError(f"{args}: a value holds a comma, which lm-eval's --model_args cannot carry. Fix: move it.")
    return ",".join(f"{k}={v}" for k, v in args.items() if v)


# ------------------------------------------------------------------------------------------------ summarize
def _runs(log_dir: Path) -> list[tuple[Path, dict]]:
    """Every lm-eval results file under ``log_dir`` with its parsed JSON."""
    if not log_dir.is_dir():
        raise LmEvalError(f"log folder {str(log_dir)!r} does not exist. Fix: give lm_eval's --output_path folder.")
    return [(p, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(log_dir.rglob("results_*.json"))]


def _model_args(model_args: str | dict | None) -> dict:
    if isinstance(model_args, str):
        return dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
    return dict(model_args or {})


def _adapter(model_args: str | dict | None) -> str:
    args = _model_args(model_args)
    return str(args.get("peft") or args.get("lora_local_path") or "")


def model_label(model_args: str | dict | None) -> str:
    """Table label of a logged model: the run name of its adapter (``peft=`` of the HF backend, ``lora_local_path=``
    of vLLM; ``runs/<run>/adapter`` gives ``<run>``), else ``base``."""
    adapter = _adapter(model_args)
    if not adapter:
        return BASE_LABEL
    path = Path(str(adapter).rstrip("/"))
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name


class _LabelTokens:
    """``label_tokens`` JSON (label -> tokens scored, as our ``rank`` mode counts them after the paper format) per
    tokenizer and label set; ``"{}"`` when the tokenizer cannot be loaded (POSIX is then NaN; the reason is logged)."""

    def __init__(self, tokenizer: str | None):
        self.override, self.loaded, self.failed = tokenizer, {}, {}

    def __call__(self, model_args: str | dict | None, labels: Sequence[str]) -> str:
        name = self.override or _model_args(model_args).get("pretrained")
        if not name or name in self.failed:
            return "{}"
        if name not in self.loaded:
            try:
                self.loaded[name] = load_tokenizer(name, _model_args(model_args).get("revision"))
            except Exception as exc:  # noqa: BLE001 (missing folder, hub unreachable, no tokenizer files)
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                log.warning("posix is NaN for %s: lm-eval logs no token counts and its tokenizer could not be loaded "
                            "(%s). Fix: summarize --tokenizer <model folder or hub id>.", name, self.failed[name])
                return "{}"
        ids = label_token_ids(self.loaded[name], labels, "paper")
        return json.dumps({lab: len(x) for lab, x in zip(labels, ids)})


def read_logs(log_dir: str | Path, mode: str | None = None, label: str | None = None,
              tokenizer: str | None = None) -> pd.DataFrame:
    """Predictions table (:data:`coinlib.evaluate.runner.PREDICTION_COLUMNS`) from lm-eval ``--log_samples`` output.

    ``mode`` (``rank``/``generate``) picks one output type when the logs hold both; ``label`` overrides the model
    label (default: :func:`model_label` of each results file's ``model_args``). ``label_tokens`` (rank mode) are
    counted with ``tokenizer`` (default: the logged ``pretrained=`` model's).
    """
    log_dir = Path(log_dir)
    runs, frames, other, seen_modes = _runs(log_dir), [], set(), set()
    count_tokens = _LabelTokens(tokenizer)
    if not runs:
        raise LmEvalError(f"no lm-eval results_*.json under {str(log_dir)!r}. "
                          "Fix: run lm_eval with --output_path pointing there and --log_samples.")
    for path, result in runs:
        stamp = path.stem.removeprefix("results_")
        model_args = (result.get("config") or {}).get("model_args")
        who, adapter = label or model_label(model_args), _adapter(model_args)
        for name, cfg in (result.get("configs") or {}).items():
            meta = cfg.get("metadata") or {}
            if "coin_mode" not in meta:
                other.add(name)
                continue
            seen_modes.add(meta["coin_mode"])
            if mode is not None and meta["coin_mode"] != mode:
                continue
            samples = path.parent / f"samples_{name}_{stamp}.jsonl"
            if not samples.is_file():
                raise LmEvalError(f"{path} lists task {name} but {samples.name} is missing beside it. "
                                  "Fix: run lm_eval with --log_samples.")
            frames.append(_unit_rows(samples, meta, who, adapter, lambda labels: count_tokens(model_args, labels)))
    if not frames:
        if seen_modes:
            raise LmEvalError(f"the logs under {str(log_dir)!r} hold only {sorted(seen_modes)} tasks, not {mode!r}. "
                              f"Fix: --mode {sorted(seen_modes)[0]}.")
        raise LmEvalError(f"the logs under {str(log_dir)!r} hold no coinlib tasks (found {sorted(other)[:5]}). "
                          "Fix: run lm_eval with --include_path <export folder> --tasks coin_robustness.")
    if mode is None and len(seen_modes) > 1:
        raise LmEvalError("the logs hold both rank and generate tasks. Fix: summarize one with --mode rank|generate.")
    predictions = pd.concat(frames, ignore_index=True)
    dup = predictions.duplicated(["model", "task", "group", "instruction_id", "instance_id"])
    if dup.any():
        first = predictions[dup].iloc[0]
        raise LmEvalError(f"the logs hold {first['model']}/{first['task']}/{first['group']}/"
                          f"{first['instruction_id']} more than once (several lm_eval runs of one model). "
                          "Fix: summarize one run's output folder, or give --label per folder.")
    return predictions


def _unit_rows(samples: Path, meta: dict, model: str, adapter: str, count_tokens) -> pd.DataFrame:
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    out, tokens = [], {}
    for s in sorted(rows, key=lambda s: s["doc_id"]):
        doc = s["doc"]
        labels = list(doc["choices"])
        if meta["coin_mode"] == "rank":
            scores = [float(r[0]) for r in s["filtered_resps"]]
            best = max(range(len(labels)), key=scores.__getitem__)
            prediction, raw = labels[best], label_continuation(labels[best], "paper")
            label_scores = json.dumps({lab: round(v, 4) for lab, v in zip(labels, scores)})
            label_tokens = tokens.setdefault(tuple(labels), count_tokens(labels))
        else:
            raw = s["resps"][0][0]
            prediction, label_scores, label_tokens = parse_label(raw, get_task(meta["coin_task"])), "{}", "{}"
        out.append({"model": model, "adapter": adapter, "task": meta["coin_task"], "group": meta["coin_group"],
                    "instruction_id": int(meta["coin_instruction_id"]), "instruction": meta["coin_instruction"],
                    "instance_id": str(doc["instance_id"]), "gold": doc["gold"], "prediction": prediction,
                    "correct": prediction == doc["gold"], "raw_output": raw, "label_scores": label_scores,
                    "label_tokens": label_tokens})
    return pd.DataFrame(out, columns=PREDICTION_COLUMNS)


def summarize_logs(log_dir: str | Path, out_dir: str | Path, mode: str | None = None, label: str | None = None,
                   n_boot: int = 1000, seed: int = 0,
                   tokenizer: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``predictions.parquet`` (+ ``.csv``) and ``summary.csv`` as ``python -m coinlib.evaluate`` does."""
    predictions = read_logs(log_dir, mode, label, tokenizer)
    summary = summarize_predictions(predictions, n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    atomic_write(out / "predictions.parquet", lambda tmp: predictions.to_parquet(tmp, index=False))
    atomic_write(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    return predictions, summary


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coinlib.evaluate.lmeval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write lm-eval tasks for the robustness suite")
    ex.add_argument("out_dir")
    ex.add_argument("--prompt-set", default="coin_eval_prompts", help="named prompt set or JSON/YAML file")
    ex.add_argument("--n-per-task", type=int, default=300, help="instances of each task's evaluation sample")
    ex.add_argument("--sample", choices=list(SAMPLES), default="shared",
                    help="evaluation sample: shared (default) or reference (the paper's code's random.sample, seed 42)")
    ex.add_argument("--groups", nargs="+", default=None, help=f"instruction groups (default: {' '.join(EVAL_GROUPS)})")
    ex.add_argument("--tasks", nargs="+", default=None, help="GLUE tasks (default: all 10)")
    ex.add_argument("--n-instructions", type=int, default=None, help="first N instructions per group and task")
    ex.add_argument("--mirror", default="auto", help="data mirror root (default: $COIN_DATA_MIRROR or ../shared/data)")
    sm = sub.add_parser("summarize", help="predictions and summary tables from lm_eval --log_samples output")
    sm.add_argument("log_dir")
    sm.add_argument("--out", required=True, help="folder for predictions.parquet/.csv and summary.csv")
    sm.add_argument("--mode", choices=list(MODES), default=None, help="output type, when the logs hold both")
    sm.add_argument("--label", default=None, help="model label in the tables (default: run name of peft=, or base)")
    sm.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the 95%% interval")
    sm.add_argument("--tokenizer", default=None,
                    help="model whose tokenizer counts the label tokens POSIX needs (default: the logged pretrained=)")
    ma = sub.add_parser("model-args", help="lm_eval --model hf --model_args for a model (offline alias -> its folder)")
    ma.add_argument("model", help="model as model.name names it, e.g. smollm2-135m-instruct")
    ma.add_argument("--adapter", default=None, help="LoRA adapter folder, e.g. runs/smoke/adapter")
    ma.add_argument("--dtype", default="float32", help="weights' dtype (default: %(default)s, as params/smoke.yaml)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        if args.command == "model-args":
            print(hf_model_args(args.model, args.adapter, args.dtype))
        elif args.command == "export":
            if args.n_per_task < 1:
                raise LmEvalError(f"--n-per-task must be >= 1, got {args.n_per_task}")
            names = export(args.out_dir, args.prompt_set, args.n_per_task, args.groups, args.tasks,
                           args.n_instructions, args.mirror, args.sample)
            print(f"wrote {len(names)} tasks to {args.out_dir}; run: lm_eval --include_path {args.out_dir} "
                  f"--tasks {SUITE} (rank) or {SUITE}_generate --log_samples --output_path LOG_DIR ...")
        else:
            _, summary = summarize_logs(args.log_dir, args.out, args.mode, args.label, args.n_boot,
                                        tokenizer=args.tokenizer)
            print(summary.to_string(index=False))
            out = Path(args.out)
            print(f"Figures: python -m coinlib.results.plots figure3 {out / 'summary.csv'} --out {out}\n"
                  f"         python -m coinlib.results.plots instructions {out / 'predictions.parquet'} --out {out}")
    except (LmEvalError, PromptSetError, KeyError, ModelUnavailable) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
