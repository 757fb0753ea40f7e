"""Evaluation speed: batched ``generate``, batched ``rank`` and a plain one-example-at-a-time greedy loop, side by side.

    .venv/bin/python benchmarks/evaluate.py                       # SmolLM2, chat format, defaults below
    .venv/bin/python benchmarks/evaluate.py --instructions 6 --instances 50 --plain-instances 50

All modes score the same units (task x group x instruction) on the same fixed-seed instances in one process. The
plain loop runs ``model.generate`` on one unpadded input at a time; with ``--plain-instances`` below
``--instances`` it scores the first instances of every unit only (its rate is per instance either way). Prints
instances per second, the ratios to the plain loop, and how often batched ``generate`` agrees with the plain loop.

For ``rank`` it also prints the achieved FLOP rate against the machine's own limit: 2 x non-embedding parameters x
the tokens the job needs (each unit's shared prefix once, every instance's own tokens and every label word's
tokens; padding and recomputation are not counted) per second, as a percentage of the rate of the model's
linear layers alone (one decoder layer's matmuls on as many rows as a ``rank`` batch holds, timed in this process
with the same threads and dtype).
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
    encode,
    format_input,
    label_continuation,
    parse_label,
    plain_greedy,
    score_instruction,
)


def non_embedding_params(model) -> int:
    """Parameters every token goes through: all but the input embedding (a tied output layer shares it)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    skip = {id(emb)} | ({id(head.weight)} if head is not None else set())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def needed_tokens(tok, instruction: str, contents, labels, fmt: str) -> tuple[int, int]:
    """(tokens ``rank`` needs for one unit: shared prefix once + each instance's suffix + each label word; the
    mean tokens per instance beyond the prefix)."""
    enc = encode(tok, [format_input(instruction, c, fmt, tok) for c in contents], fmt)
    cont = sum(len(tok(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"]) for lab in labels)
    own = sum(len(s) + cont for s in enc.suffixes)
    return len(enc.prefix) + own, own // len(contents)


@torch.inference_mode()
def matmul_rate(model, rows: int, repeats: int = 20) -> float:
    """FLOP/s of one decoder layer's linear layers (the model's shapes and dtype) on ``rows`` rows."""
    layer = model.model.layers[0]
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    dtype = next(model.parameters()).dtype
    xs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in linears}
    flop = sum(2 * rows * m.in_features * m.out_features for m in linears)
    for _ in range(3):
        for m in linears:
            torch.nn.functional.linear(xs[m.in_features], m.weight)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            for m in linears:
                torch.nn.functional.linear(xs[m.in_features], m.weight)
        best = min(best, (time.perf_counter() - start) / repeats)
    return flop / best


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
    ap.add_argument("--modes", nargs="+", default=["generate", "generate_no_early_stop", "rank"],
                    help="batched modes to time (the plain loop always runs)")
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

    tokens = {u: needed_tokens(tok, prompts[u[1]][u[0]][u[2]], data[u[0]]["content"].tolist(), get_task(u[0]).labels,
                               args.format) for u in units}
    per_instance = sum(t[1] for t in tokens.values()) / len(units)
    rows = round(args.batch_size * per_instance)
    flop_per_token = 2 * non_embedding_params(model)
    limits = [matmul_rate(model, rows)]  # timed again after the batched modes; the higher rate is the limit
    print(f"rank needs {per_instance:.1f} tokens per instance beyond the shared prefix; {flop_per_token / 1e6:.0f} MFLOP "
          f"per token; linear layers on {rows} rows: {limits[0] / 1e9:.1f} GFLOP/s", flush=True)
    results, rates, achieved = {}, {}, {}
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
        rates[name] = len(units) * args.instances / seconds
        if name == "rank":
            achieved[name] = flop_per_token * sum(t[0] for t in tokens.values()) / seconds
        results[name] = preds
        print(f"  {name}: {rates[name]:.2f} instances/s", flush=True)
    limits.append(matmul_rate(model, rows))
    limit = max(limits)
    print(f"  linear layers again: {limits[1] / 1e9:.1f} GFLOP/s", flush=True)
    start, plain = time.perf_counter(), {}
    for t, g, i in units:
        texts = [format_input(prompts[g][t][i], c, args.format, tok) for c in data[t]["content"][:n_plain]]
        plain[(t, g, i)] = [parse_label(plain_greedy(model, tok, x, args.format), get_task(t)) for x in texts]
    rates["plain_loop"] = len(units) * n_plain / (time.perf_counter() - start)
    print(f"  plain_loop: {rates['plain_loop']:.2f} instances/s", flush=True)

    print(f"\n{'mode':<24}{'inst/s':>9}{'x plain':>9}{'accuracy':>10}{'= plain':>9}{'GFLOP/s':>9}{'% matmul':>10}")
    for name in [*results, "plain_loop"]:
        preds = results.get(name, plain)
        gold = {u: data[u[0]]["gold"].tolist() for u in units}
        acc = sum(p == g for u in units for p, g in zip(preds[u][:n_plain], gold[u])) / (len(units) * n_plain)
        same = sum(p == q for u in units for p, q in zip(preds[u][:n_plain], plain[u])) / (len(units) * n_plain)
        agree = f"{same:9.1%}" if name.startswith("generate") or name == "plain_loop" else f"{'-':>9}"
        flops = (f"{achieved[name] / 1e9:9.1f}{achieved[name] / limit:10.1%}" if name in achieved
                 else f"{'-':>9}{'-':>10}")
        print(f"{name:<24}{rates[name]:9.2f}{rates[name] / rates['plain_loop']:9.1f}{acc:10.3f}{agree}{flops}")


if __name__ == "__main__":
    main()
