"""Cost of ``train.balance: grad_norm`` (two backward passes per micro-batch) against ``none`` (one).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/balance_cost.py [--models tiny smollm2] [--repeats 7]

Two measurements per model, none and grad_norm side by side, interleaved, medians over the repeats:
  train   ``train_on`` for 2 optimizer steps (batch_size 4 = 2 micro-batches of a mutual pair each, reference
          batching, entries from tests/entries_helper.py), timed from the Trainer's train begin to train end
  step    one ``CoinTrainer.training_step`` (forward + backward(s)) on one micro-batch, the optimizer step apart
Prints the grad_norm/none ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from transformers import TrainerCallback  # noqa: E402

from coinlib.core.params import validate  # noqa: E402

BALANCES = ("none", "grad_norm")


class _Clock(TrainerCallback):
    def on_train_begin(self, *args, **kwargs):
        self.t0 = time.perf_counter()

    def on_train_end(self, *args, **kwargs):
        self.seconds = time.perf_counter() - self.t0


def _params(root: str, name: str, model: str, balance: str, **train):
    return validate({"run": {"name": name, "output_root": root}, "model": {"name": model},
                     "train": {"max_steps": 2, "batch_size": 4, "micro_batch_pairs": 2, "save_steps": 100,
                               "logging_steps": 1, "report_to": [], "cutoff_len": 64, "balance": balance, **train}})


def _model(name: str, tok):
    from coinlib.core.models import load_model, tiny_llama

    if name == "tiny":
        return tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, seed=0)
    return load_model(_params(tempfile.mkdtemp(), "m", name, "none").model)[0]


def time_train(name: str, repeats: int) -> dict[str, float]:
    from entries_helper import make_entries

    from coinlib.core.models import load_tokenizer
    from coinlib.train.trainer import train_on

    tok = load_tokenizer("smollm2-135m-instruct")
    model_name = "smollm2-135m-instruct"
    times: dict[str, list[float]] = {b: [] for b in BALANCES}
    for i in range(repeats + 1):  # the first round warms up
        for b in BALANCES:
            clock = _Clock()
            P = _params(tempfile.mkdtemp(), f"r{i}", model_name, b)
            train_on(P, make_entries(8), _model(name if name == "tiny" else model_name, tok), tok, callbacks=[clock])
            if i:
                times[b].append(clock.seconds)
    return {b: statistics.median(v) for b, v in times.items()}


def time_step(name: str, repeats: int) -> dict[str, float]:
    from entries_helper import make_entries

    from coinlib.core.models import load_tokenizer
    from coinlib.train.batching import PairCollator, encode_entries
    from coinlib.train.trainer import CoinTrainer, prepare_model, training_arguments

    tok = load_tokenizer("smollm2-135m-instruct")
    P = _params(tempfile.mkdtemp(), "s", "smollm2-135m-instruct", "none")
    model, tok = prepare_model(P, _model(name if name == "tiny" else "smollm2-135m-instruct", tok), tok)
    model.train()
    enc = encode_entries(make_entries(2), tok, 64)
    collator = PairCollator(tok, negatives=False)
    batch = collator([enc[0], enc[1]])
    trainers = {}
    for b in BALANCES:
        t = P.train.model_copy(update={"balance": b, "batch_size": 2})
        trainers[b] = CoinTrainer(model=model, args=training_arguments(P.model_copy(update={"train": t})),
                                  train_dataset=enc, data_collator=collator, coin=t)
        trainers[b].current_gradient_accumulation_steps = 1  # set by train() otherwise
    times: dict[str, list[float]] = {b: [] for b in BALANCES}
    for i in range(repeats + 1):
        for b, trainer in trainers.items():
            t0 = time.perf_counter()
            trainer.training_step(model, batch)
            model.zero_grad(set_to_none=True)
            if i:
                times[b].append(time.perf_counter() - t0)
    return {b: statistics.median(v) for b, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny"], choices=["tiny", "smollm2"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    for name in args.models:
        for what, fn in (("train (2 steps)", time_train), ("step (1 micro-batch)", time_step)):
            t = fn(name, args.repeats)
            print(f"{name:8s} {what:22s} none {t['none']:.4f}s  grad_norm {t['grad_norm']:.4f}s  "
                  f"ratio {t['grad_norm'] / t['none']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
