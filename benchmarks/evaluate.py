"""Evaluation speed: batched ``generate``, batched ``rank`` and a plain one-example-at-a-time greedy loop, side by side.

    .venv/bin/python benchmarks/evaluate.py                       # SmolLM2, chat format, defaults below
    .venv/bin/python benchmarks/evaluate.py --instructions 6 --instances 50 --plain-instances 50

All modes score the same units (task x group x instruction) on the same fixed-seed instances in one process. The
plain loop runs ``model.generate`` on one unpadded input at a time; with ``--plain-instances`` below
``--instances`` it scores the first instances of every unit only (its rate is per instance either way). Prints
instances per second, the ratios to the plain loop, and how often batched ``generate`` agrees with the plain loop.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from coinlib.core.models import load_model
from coinlib.core.params import ModelParams
from coinlib.core.promptsets import load_prompt_set, select
from coinlib.core.tasks import get_task, load_task
from coinlib.evaluate.scoring import (
    format_input,
    parse_label,
    plain_greedy,
    score_instruction,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--format", default="chat", choices=["paper", "train", "chat"])
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--groups", nargs="+", default=["clean", "checklist"])
    ap.add_argument("--instructions", type=int, default=6)
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--plain-instances", type=int, default=None, help="instances per unit for the plain loop")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(ModelParams(name=args.model, dtype=args.dtype))
    model.eval()
    prompts = select(load_prompt_set("coin_eval_prompts"), args.groups, args.tasks, args.instructions)
    data = {t: load_task(t, args.instances) for t in args.tasks}
    units = [(t, g, i) for t in args.tasks for g in args.groups for i in range(len(prompts[g][t]))]
    n_plain = min(args.plain_instances or args.instances, args.instances)
    print(f"model {args.model} ({args.dtype}), format {args.format}, {torch.get_num_threads()} threads, "
          f"cpus {os.cpu_count()}; {len(units)} units x {args.instances} instances (plain loop: {n_plain})", flush=True)

    results, rates = {}, {}
    runs = [("generate", dict(mode="generate", early_stop=True)),
            ("generate_no_early_stop", dict(mode="generate", early_stop=False)),
            ("rank", dict(mode="rank"))]
    for name, kwargs in runs:
        start, preds = time.perf_counter(), {}
        for t, g, i in units:
            out = score_instruction(model, tok, prompts[g][t][i], data[t]["content"].tolist(), get_task(t),
                                    args.format, batch_size=args.batch_size, **kwargs)
            preds[(t, g, i)] = [o.prediction for o in out]
        rates[name] = len(units) * args.instances / (time.perf_counter() - start)
        results[name] = preds
        print(f"  {name}: {rates[name]:.2f} instances/s", flush=True)
    start, plain = time.perf_counter(), {}
    for t, g, i in units:
        texts = [format_input(prompts[g][t][i], c, args.format, tok) for c in data[t]["content"][:n_plain]]
        plain[(t, g, i)] = [parse_label(plain_greedy(model, tok, x, args.format), get_task(t)) for x in texts]
    rates["plain_loop"] = len(units) * n_plain / (time.perf_counter() - start)
    print(f"  plain_loop: {rates['plain_loop']:.2f} instances/s", flush=True)

    print(f"\n{'mode':<24}{'inst/s':>9}{'x plain':>9}{'accuracy':>10}{'= plain':>9}")
    for name in [*results, "plain_loop"]:
        preds = results.get(name, plain)
        gold = {u: data[u[0]]["gold"].tolist() for u in units}
        acc = sum(p == g for u in units for p, g in zip(preds[u][:n_plain], gold[u])) / (len(units) * n_plain)
        same = sum(p == q for u in units for p, q in zip(preds[u][:n_plain], plain[u])) / (len(units) * n_plain)
        agree = f"{same:9.1%}" if name.startswith("generate") or name == "plain_loop" else f"{'-':>9}"
        print(f"{name:<24}{rates[name]:9.2f}{rates[name] / rates['plain_loop']:9.1f}{acc:10.3f}{agree}")


if __name__ == "__main__":
    main()
