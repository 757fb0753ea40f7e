"""lm-evaluation-harness's HF backend vs our runner: instances per second for rank and generate on the same units.

    .venv/bin/python benchmarks/lmeval_vs_runner.py                   # SmolLM2, paper format, defaults below
    .venv/bin/python benchmarks/lmeval_vs_runner.py --instructions 6 --instances 50

Both score the same units (task x group x instruction, paper format) on the same instances of the evaluation
sample, with the same loaded model and batch size, in one process: lm-eval through the tasks that
``python -m coinlib.evaluate.lmeval export`` writes (``multiple_choice`` / ``generate_until``), ours through
:func:`coinlib.evaluate.scoring.score_instruction` (``rank`` / ``generate`` with early stop). lm-eval's time is
that of ``simple_evaluate`` after a warm-up run (task set-up from the local JSONL included). Prints instances/s
side by side and how often the two pipelines' predictions agree.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from coinlib.core.models import load_model
from coinlib.core.params import ModelParams
from coinlib.core.promptsets import load_prompt_set, select
from coinlib.core.tasks import get_task, load_task
from coinlib.evaluate import lmeval
from coinlib.evaluate.scoring import score_instruction


def main() -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--groups", nargs="+", default=["clean"])
    ap.add_argument("--instructions", type=int, default=2)
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model, tok = load_model(ModelParams(name=args.model, dtype=args.dtype))
    model.eval()
    prompts = select(load_prompt_set("coin_eval_prompts"), args.groups, args.tasks, args.instructions)
    data = {t: load_task(t, args.instances) for t in args.tasks}
    units = [(t, g, i) for t in args.tasks for g in args.groups for i in range(len(prompts[g][t]))]
    n = sum(len(data[t]) for t, _, _ in units)
    print(f"model {args.model} ({args.dtype}), paper format, batch {args.batch_size}, {torch.get_num_threads()} "
          f"threads, cpus {os.cpu_count()}; {len(units)} units, {n} instances per mode", flush=True)

    suite = tempfile.mkdtemp(prefix="coin-lmeval-")
    lmeval.export(suite, n_per_task=args.instances, groups=args.groups, tasks=args.tasks,
                  n_instructions=args.instructions)
    manager = TaskManager(include_path=suite)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, max_gen_toks=lmeval.MAX_NEW_TOKENS)
    names = {m: [lmeval.task_name(m, t, g, i) for t, g, i in units] for m in lmeval.MODES}
    lm_eval.simple_evaluate(model=lm, tasks=names["rank"][:1], limit=1, task_manager=manager, verbosity="ERROR")

    rates, agree = {}, {}
    for mode in lmeval.MODES:
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=names[mode], task_manager=manager, log_samples=True,
                                      verbosity="ERROR")
        rates[("lm-eval", mode)] = n / (time.perf_counter() - start)
        start, same = time.perf_counter(), 0
        for (t, g, i), name in zip(units, names[mode]):
            ours = score_instruction(model, tok, prompts[g][t][i], data[t]["content"].tolist(), get_task(t).labels,
                                     "paper", mode=mode, batch_size=args.batch_size)
            theirs = sorted(out["samples"][name], key=lambda s: s["doc_id"])
            labels = get_task(t).labels
            for s, o in zip(theirs, ours):
                if mode == "rank":
                    scores = [float(r[0]) for r in s["filtered_resps"]]
                    pred = labels[max(range(len(labels)), key=scores.__getitem__)]
                else:
                    pred = lmeval.parse_label(s["resps"][0][0], labels)
                same += pred == o.prediction
        rates[("runner", mode)] = n / (time.perf_counter() - start)
        agree[mode] = same / n
        print(f"  {mode}: lm-eval {rates[('lm-eval', mode)]:.2f}, runner {rates[('runner', mode)]:.2f} inst/s",
              flush=True)

    print(f"\n{'mode':<10}{'lm-eval inst/s':>16}{'runner inst/s':>15}{'runner/lm-eval':>16}{'same pred':>11}")
    for mode in lmeval.MODES:
        a, b = rates[("lm-eval", mode)], rates[("runner", mode)]
        print(f"{mode:<10}{a:16.2f}{b:15.2f}{b / a:16.2f}{agree[mode]:11.1%}")


if __name__ == "__main__":
    main()
