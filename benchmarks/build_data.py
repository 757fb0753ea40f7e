"""Time a full-size data build: 52,002 entries over every task with data, instances reused where the mirror is small.

    .venv/bin/python benchmarks/build_data.py [--size 52002] [--seed 0]

Prints seconds per stage (pools, entries, leakage guard, writing) and entries per second, beside the
60 s target. Output goes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from coinlib.core.params import validate
from coinlib.data import pairs

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=52002)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        P = validate({"run": {"name": "bench", "output_root": tmp, "seed": args.seed},
                      "data": {"tasks": ["all"], "size": args.size, "replacement": True}})
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        pools = pairs.load_pools(P.data.tasks, P.run.mirror, P.data.eval_holdout, sample=P.evaluate.sample)
        stages["pools"] = time.perf_counter() - t0
        t = time.perf_counter()
        entries = pairs.build_entries(pools.pools, P.data.size, P.run.seed, P.data.replacement)
        stages["entries"] = time.perf_counter() - t
        t = time.perf_counter()
        pairs.check_leakage(entries, pairs.eval_instructions(P.data.eval_prompt_sets, P.run.mirror))
        stages["leakage guard"] = time.perf_counter() - t
        t = time.perf_counter()
        ds = pairs.build(P, progress=False)  # the whole public path again, writing dataset + JSONL + counts
        stages["build(P) end to end"] = time.perf_counter() - t
        size_mb = sum(f.stat().st_size for f in Path(P.data_dir).rglob("*") if f.is_file()) / 1e6
    total = stages["build(P) end to end"]
    print(f"tasks with data: {len(pools.pools)}; skipped: {', '.join(s.task for s in pools.skips) or 'none'}")
    for name, sec in stages.items():
        print(f"  {name:<22} {sec:7.2f} s")
    print(f"entries built: {ds.num_rows} ({size_mb:.0f} MB written)")
    print(f"build(P): {total:.1f} s = {ds.num_rows / total:,.0f} entries/s | target < {TARGET_S:.0f} s: "
          f"{'met' if total < TARGET_S else 'MISSED'} ({total / TARGET_S:.2f} of the budget)")


if __name__ == "__main__":
    main()
