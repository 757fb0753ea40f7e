"""Training speed by precision: real optimizer steps of the sentiment study's recipe, side by side in one process.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_precision.py [--steps 4] [--params params/study-sentiment.yaml]

Each mode trains a fresh LoRA adapter on SmolLM2-135M-Instruct through ``coinlib.train.trainer.train_on`` (HF
Trainer, accelerate's autocast, optimizer, clipping: everything a run does) for ``--steps`` optimizer steps of the
recipe's batch on the recipe's first entries. The first step is warm-up; the median of the others is reported.
  fp32-full-head   float32, the output layer over every position (the training path before the fast path)
  fp32             float32, the output layer at the supervised positions only
  autocast-full    float32 weights, bf16 autocast (train.mixed_precision: bf16), output layer everywhere
  autocast         float32 weights, bf16 autocast, output layer at the supervised positions
  bf16             bfloat16 base weights (model.dtype: bfloat16; LoRA weights stay float32), bf16 autocast,
                   output layer at the supervised positions
Needed work per step: 4 x non-embedding parameters per real token (forward, and the backward to the inputs: the
base weights are frozen) + 4 x vocabulary x hidden per supervised token (attention not counted). Its rate is
printed as a share of the matmul limit of the dtype the mode computes in (benchmarks/limits.py), and the
speed-up over ``fp32-full-head``. The bfloat16 modes run by default only where :func:`coinlib.core.precision.bf16_is_fast`
(elsewhere a step takes minutes; ``--modes`` forces them).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import statistics
import tempfile
import time
from unittest import mock

import torch
from limits import matmul_limits, non_embedding_params
from transformers import TrainerCallback

ROWS = 4 * 200  # a micro-batch of the recipe: 2 originals + 2 paraphrases of about 200 tokens
MODES = {  # name: (model.dtype, train.mixed_precision, output layer at supervised positions only)
    "fp32-full-head": ("float32", "no", False),
    "fp32": ("float32", "no", True),
    "autocast-full": ("float32", "bf16", False),
    "autocast": ("float32", "bf16", True),
    "bf16": ("bfloat16", "auto", True),
}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def needed_flop(P, data, tokenizer, model, steps: range) -> float:
    """Work the recipe needs for the entries of ``steps`` (0-based optimizer steps, data order)."""
    from coinlib.train.batching import IGNORE, encode_entries

    per_step = P.train.batch_size
    enc = encode_entries(data.select(range(steps.start * per_step, steps.stop * per_step)), tokenizer,
                         P.train.cutoff_len, P.train.append_eos, P.train.truncation)
    tokens = sum(len(r["orig_ids"]) + len(r["pos_ids"]) for r in enc)
    supervised = sum(sum(x != IGNORE for x in r[c][1:]) for r in enc for c in ("orig_labels", "pos_labels"))
    head = model.get_output_embeddings().weight
    return 4 * non_embedding_params(model) * tokens + 4 * head.numel() * supervised


def main() -> None:
    from coinlib.core.models import load_model
    from coinlib.core.precision import bf16_is_fast
    from coinlib.core.params import load_params
    from coinlib.data.pairs import load_or_build
    from coinlib.train import trainer as train_mod

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/study-sentiment.yaml")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=None, choices=list(MODES))
    args = ap.parse_args()
    base = load_params(args.params)
    data = load_or_build(base, progress=False)
    fast = bf16_is_fast()
    modes = args.modes or [m for m, (dtype, mp, _) in MODES.items() if fast or (dtype, mp) == ("float32", "no")]
    limits = matmul_limits(load_model(base.model)[0], ROWS)
    print(f"matmul limits (one decoder layer's linear layers on {ROWS} rows): float32 {limits['float32'] / 1e9:.0f} "
          f"GFLOP/s, bfloat16 {limits['bfloat16'] / 1e9:.0f} GFLOP/s ({limits['bfloat16'] / limits['float32']:.2f}x); "
          f"native bf16 here: {fast} (CPU capability {torch.backends.cpu.get_cpu_capability()})", flush=True)
    if not args.modes and not fast:
        print("bfloat16 modes skipped: no native bf16 matmul on this machine (pass --modes to force them)", flush=True)
    print(f"{args.params}: {base.model.name}, batch {base.train.batch_size} entries in micro-batches of "
          f"{base.train.micro_batch_pairs}, contrastive {base.train.contrastive}; {args.steps} steps per mode, "
          f"{torch.get_num_threads()} threads", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            dtype, mp, sparse = MODES[mode]
            P = base.model_copy(update={
                "run": base.run.model_copy(update={"name": f"bench-{mode}", "output_root": tmp}),
                "model": base.model.model_copy(update={"dtype": dtype}),
                "train": base.train.model_copy(update={"mixed_precision": mp, "max_steps": args.steps,
                                                       "save_steps": 10_000, "report_to": [], "logging_steps": 1})})
            model, tok = load_model(P.model)
            timer = StepTimer()
            patch = mock.patch.object(train_mod, "output_layer", lambda m: None) if not sparse else nullcontext()
            with patch:
                train_mod.train_on(P, data.select(range(args.steps * P.train.batch_size)), model, tok, [timer])
            seconds = statistics.median(timer.times[1:])
            flop = needed_flop(P, data, tok, model, range(1, args.steps)) / (args.steps - 1)
            results[mode] = (seconds, flop, "bfloat16" if mp != "no" or dtype == "bfloat16" else "float32")
            print(f"  {mode}: {seconds:.2f} s/step (steps {', '.join(f'{t:.2f}' for t in timer.times)})", flush=True)
            del model
    ref = results.get("fp32-full-head", next(iter(results.values())))[0]
    print(f"\n{'mode':<16}{'s/step':>8}{'GFLOP/s':>9}{'limit':>10}{'% limit':>9}{'speed-up':>10}")
    for mode, (seconds, flop, dt) in results.items():
        rate = flop / seconds
        print(f"{mode:<16}{seconds:8.2f}{rate / 1e9:9.1f}{dt:>10}{rate / limits[dt]:9.1%}{ref / seconds:9.2f}x")


if __name__ == "__main__":
    main()
