"""Evaluation speed: batched ``generate``, batched ``rank`` and a plain one-example-at-a-time greedy loop, side by side.

    .venv/bin/python benchmarks/evaluate.py                       # SmolLM2, chat format, defaults below
    .venv/bin/python benchmarks/evaluate.py --instructions 6 --instances 50 --plain-instances 50

All modes score the same units (task x group x instruction) on the same fixed-seed instances in one process. The
plain loop runs ``model.generate`` on one unpadded input at a time; with ``--plain-instances`` below
``--instances`` it scores the first instances of every unit only (its rate is per instance either way). Prints
instances per second, the ratios to the plain loop, and how often batched ``generate`` agrees with the plain loop.

Each mode runs in every dtype of ``--dtypes`` (default float32, plus bfloat16 where the machine computes it
natively). For ``rank`` it also prints the achieved FLOP rate: 2 x non-embedding parameters x the tokens the job
needs (each unit's shared prefix once, every instance's own tokens and every label word's tokens; padding and
recomputation are not counted) per second, as a percentage of the matmul limit of the dtype it computes in (one
decoder layer's linear layers on as many rows as a ``rank`` batch holds, benchmarks/limits.py), its speed-up over
float32 rank, and how many rank predictions the two dtypes share.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from limits import matmul_limits, non_embedding_params

from coinlib.core.models import load_model
from coinlib.core.precision import bf16_is_fast
from coinlib.core.params import ModelParams
from coinlib.core.promptsets import load_prompt_set, select
from coinlib.core.tasks import get_task, load_task
from coinlib.evaluate.scoring import (
    encode,
    format_input,
    label_continuation,
    parse_label,
    plain_greedy,
    score_instruction,
)


def needed_tokens(tok, instruction: str, contents, labels, fmt: str) -> tuple[int, int]:
    """(tokens ``rank`` needs for one unit: shared prefix once + each instance's suffix + each label word; the
    mean tokens per instance beyond the prefix)."""
    enc = encode(tok, [format_input(instruction, c, fmt, tok) for c in contents], fmt)
    cont = sum(len(tok(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"]) for lab in labels)
    own = sum(len(s) + cont for s in enc.suffixes)
    return len(enc.prefix) + own, own // len(contents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16"],
                    help="default: float32, and bfloat16 where this machine computes it natively")
    ap.add_argument("--format", default="chat", choices=["paper", "train", "chat"])
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--groups", nargs="+", default=["clean", "checklist"])
    ap.add_argument("--instructions", type=int, default=6)
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--plain-instances", type=int, default=None, help="instances per unit for the plain loop")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", nargs="+", default=["generate", "generate_no_early_stop", "rank"],
                    help="batched modes to time (the plain loop always runs, in the first dtype)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes or (["float32", "bfloat16"] if bf16_is_fast() else ["float32"])
    prompts = select(load_prompt_set("coin_eval_prompts"), args.groups, args.tasks, args.instructions)
    data = {t: load_task(t, args.instances) for t in args.tasks}
    units = [(t, g, i) for t in args.tasks for g in args.groups for i in range(len(prompts[g][t]))]
    n_plain = min(args.plain_instances or args.instances, args.instances)
    print(f"model {args.model}, format {args.format}, {torch.get_num_threads()} threads, cpus {os.cpu_count()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {bf16_is_fast()}; {len(units)} "
          f"units x {args.instances} instances (plain loop: {n_plain}); dtypes {', '.join(dtypes)}", flush=True)
    results, rates, achieved, plain, limits = {}, {}, {}, {}, {}
    for dtype in dtypes:
        model, tok = load_model(ModelParams(name=args.model, dtype=dtype))
        model.eval()
        if not limits:
            tokens = {u: needed_tokens(tok, prompts[u[1]][u[0]][u[2]], data[u[0]]["content"].tolist(),
                                       get_task(u[0]).labels, args.format) for u in units}
            per_instance = sum(t[1] for t in tokens.values()) / len(units)
            rows = round(args.batch_size * per_instance)
            flop_per_token = 2 * non_embedding_params(model)
            limits = matmul_limits(model, rows)
            print(f"rank needs {per_instance:.1f} tokens per instance beyond the shared prefix; "
                  f"{flop_per_token / 1e6:.0f} MFLOP per token; matmul limits on {rows} rows: float32 "
                  f"{limits['float32'] / 1e9:.1f}, bfloat16 {limits['bfloat16'] / 1e9:.1f} GFLOP/s", flush=True)
        runs = [("generate", dict(mode="generate", early_stop=True)),
                ("generate_no_early_stop", dict(mode="generate", early_stop=False)),
                ("rank", dict(mode="rank"))]
        for name, kwargs in [r for r in runs if r[0] in args.modes]:
            start, preds = time.perf_counter(), {}
            for t, g, i in units:
                out = score_instruction(model, tok, prompts[g][t][i], data[t]["content"].tolist(), get_task(t),
                                        args.format, batch_size=args.batch_size, **kwargs)
                preds[(t, g, i)] = [o.prediction for o in out]
            seconds = time.perf_counter() - start
            key = (name, dtype)
            rates[key] = len(units) * args.instances / seconds
            if name == "rank":
                achieved[key] = flop_per_token * sum(t[0] for t in tokens.values()) / seconds
            results[key] = preds
            print(f"  {name} ({dtype}): {rates[key]:.2f} instances/s", flush=True)
        if not plain:
            start = time.perf_counter()
            for t, g, i in units:
                texts = [format_input(prompts[g][t][i], c, args.format, tok) for c in data[t]["content"][:n_plain]]
                plain[(t, g, i)] = [parse_label(plain_greedy(model, tok, x, args.format), get_task(t)) for x in texts]
            rates[("plain_loop", dtype)] = len(units) * n_plain / (time.perf_counter() - start)
            results[("plain_loop", dtype)] = plain
            print(f"  plain_loop ({dtype}): {rates[('plain_loop', dtype)]:.2f} instances/s", flush=True)
        del model
    plain_rate = rates[("plain_loop", dtypes[0])]
    rank_fp32 = rates.get(("rank", "float32"))
    gold = {u: data[u[0]]["gold"].tolist() for u in units}
    print(f"\n{'mode':<24}{'dtype':>9}{'inst/s':>9}{'x plain':>9}{'accuracy':>10}{'= plain':>9}{'GFLOP/s':>9}"
          f"{'% limit':>9}{'x fp32 rank':>12}")
    for (name, dtype), preds in results.items():
        acc = sum(p == g for u in units for p, g in zip(preds[u][:n_plain], gold[u])) / (len(units) * n_plain)
        same = sum(p == q for u in units for p, q in zip(preds[u][:n_plain], plain[u])) / (len(units) * n_plain)
        agree = f"{same:9.1%}" if name.startswith("generate") or name == "plain_loop" else f"{'-':>9}"
        rate = achieved.get((name, dtype))
        flops = f"{rate / 1e9:9.1f}{rate / limits[dtype]:9.1%}" if rate else f"{'-':>9}{'-':>9}"
        speed = f"{rates[(name, dtype)] / rank_fp32:12.2f}" if name == "rank" and rank_fp32 else f"{'-':>12}"
        print(f"{name:<24}{dtype:>9}{rates[(name, dtype)]:9.2f}{rates[(name, dtype)] / plain_rate:9.1f}{acc:10.3f}"
              f"{agree}{flops}{speed}")
    if ("rank", "bfloat16") in results and ("rank", "float32") in results:
        a, b = results[("rank", "float32")], results[("rank", "bfloat16")]
        same = sum(p == q for u in units for p, q in zip(a[u], b[u])) / (len(units) * args.instances)
        print(f"rank predictions identical in float32 and bfloat16: {same:.1%}")


if __name__ == "__main__":
    main()
