"""Accuracy drop of generated instruction variants beside the paper's fixed sets, on one model.

    .venv/bin/python -m coinlib.perturb --out runs/perturb/generated_seed0.json --tasks sst2 cola rte \\
        --levels character word sentence stresstest semantic
    .venv/bin/python benchmarks/perturb_drop.py runs/perturb/generated_seed0.json --tasks sst2 cola rte --n 48

Both sets start from the same clean instructions. One evaluation (coinlib.evaluate.runner) scores the paper's groups
and the generated ones (prefixed ``gen_``) on the same instances; the table prints mean accuracy per group
and its drop from clean, paper and generated side by side, and is written to runs/<name>/eval/drop_table.csv.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from coinlib.core.params import validate
from coinlib.core.promptsets import load_prompt_set
from coinlib.evaluate.runner import run_evaluation
from coinlib.perturb import GROUP_OF
from coinlib.perturb.promptset import META_KEYS, write_prompt_set

PAPER_GROUPS = ["deepwordbug", "textfooler", "checklist", "semantic"]


def combined_set(generated: str, tasks: list[str]) -> dict:
    """The paper's groups and the generated ones (``gen_<group>``) for ``tasks`` in one prompt set."""
    paper = load_prompt_set("coin_eval_prompts")
    gen = {g: v for g, v in json.loads(open(generated, encoding="utf-8").read()).items() if g not in META_KEYS}
    if gen["clean"] != {t: paper["clean"][t] for t in gen["clean"]}:
        raise SystemExit(f"{generated} was not generated from the paper's clean instructions")
    out = {"source": f"paper groups + gen_* from {generated}", "license": "see coin_eval_prompts",
           "clean": {t: paper["clean"][t] for t in tasks}}
    out.update({g: {t: paper[g][t] for t in tasks} for g in PAPER_GROUPS})
    out.update({f"gen_{g}": {t: gen[g][t] for t in tasks} for g in GROUP_OF.values() if g in gen})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generated", help="prompt set written by python -m coinlib.perturb")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "cola", "rte"])
    ap.add_argument("--n", type=int, default=48, help="instances per task")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--scoring", default="rank", choices=["rank", "generate"])
    ap.add_argument("--name", default="perturb-drop")
    args = ap.parse_args()

    prompts = combined_set(args.generated, args.tasks)
    P = validate({"run": {"name": args.name}, "model": {"name": args.model},
                  "evaluate": {"tasks": args.tasks, "n_per_task": args.n, "scoring": args.scoring, "adapters": [],
                               "n_instructions": None, "include_base": True, "groups": [g for g in prompts if g not in META_KEYS],
                               "prompt_set": str(write_prompt_set(prompts, f"runs/{args.name}/prompt_set.json"))}})
    tables = run_evaluation(P)
    s = tables.summary
    mean = s.groupby("group")["mean_acc"].mean()
    rows = []
    for g in ["clean", *PAPER_GROUPS, "stresstest"]:
        paper, gen = mean.get(g, float("nan")), mean.get(f"gen_{g}", float("nan"))
        rows.append({"group": g, "paper_acc": paper, "generated_acc": gen if g != "clean" else paper,
                     "paper_drop": mean["clean"] - paper, "generated_drop": mean["clean"] - gen if g != "clean" else 0.0})
    table = pd.DataFrame(rows)
    per_task = s.pivot_table(index="task", columns="group", values="mean_acc")
    table.to_csv(P.run_dir / "eval" / "drop_table.csv", index=False)
    per_task.to_csv(P.run_dir / "eval" / "drop_table_per_task.csv")
    counts = s.groupby("group")["n_instructions"].min().to_dict()
    print(f"model {args.model}, tasks {args.tasks}, {args.n} instances each, scoring {args.scoring}; "
          f"accuracy averaged over tasks; instructions per task and group: {counts}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(per_task.to_string(float_format=lambda x: f"{x:.3f}"))


if __name__ == "__main__":
    main()
