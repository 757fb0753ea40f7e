"""Generate a perturbed prompt set from a clean one.

    python -m coinlib.perturb --out prompts.json --levels character word sentence --seed 0
"""

from __future__ import annotations

import argparse
import logging

from coinlib.core.groups import LEVELS, RULE_LEVELS
from coinlib.perturb.promptset import (
    META_KEYS,
    build_prompt_set,
    clean_instructions,
    write_prompt_set,
)
from coinlib.perturb.semantic import model_rephraser
from coinlib.perturb.synonyms import default_synonyms


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m coinlib.perturb", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output JSON file (group -> task -> instructions)")
    ap.add_argument("--levels", nargs="+", default=list(RULE_LEVELS), choices=LEVELS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=4, help="words changed at the character and word levels")
    ap.add_argument("--source", default="coin_eval_prompts", help="prompt-set artifact name or JSON file")
    ap.add_argument("--group", default="clean", help="group of the source holding the clean instructions")
    ap.add_argument("--tasks", nargs="*", default=None, help="tasks to keep (default: every task with labels)")
    ap.add_argument("--semantic-model", default="smollm2-135m-instruct", help="instruction model for rephrasing")
    ap.add_argument("--semantic-tries", type=int, default=6, help="samples per instruction before giving up")
    ap.add_argument("--no-similarity", action="store_true",
                    help="semantic level: skip the MiniLM similarity check (keeps only the protected-term check)")
    ap.add_argument("--mirror", default="auto", help="data mirror root ('auto', a folder, or 'hub')")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    clean = clean_instructions(args.source, args.mirror, args.group)
    if args.tasks:
        missing = sorted(set(args.tasks) - set(clean))
        if missing:
            ap.error(f"tasks {missing} not in the source; available: {sorted(clean)}")
        clean = {t: clean[t] for t in args.tasks}
    options = {}
    if "semantic" in args.levels:

        options["semantic"] = {"generate": model_rephraser(args.semantic_model), "tries": args.semantic_tries}
        if not args.no_similarity:
            options["semantic"]["similarity"] = default_synonyms().similarities
    data = build_prompt_set(clean, args.levels, args.seed, args.budget, options, source_name=str(args.source))
    path = write_prompt_set(data, args.out)
    counts = {g: sum(map(len, v.values())) for g, v in data.items() if g not in META_KEYS}
    print(f"wrote {path}: instructions per group {counts}")


if __name__ == "__main__":
    main()
