"""Time a COIN training step against a CIT step on the same entries; report peak memory.

    .venv/bin/python benchmarks/train_step.py [--models tiny smollm2] [--repeats 5]

Modes, all through ``CoinTrainer.training_step`` (forward + backward) on the same micro-batch: the first 2
entries of the smoke data (``params/smoke.yaml``, built on first use), a pair of mutual hard negatives:
  cit            generation loss only: originals + positives (4 sequences)
  coin           COIN as trained by default (batching: reference): the same 4 sequences, InfoNCE over them
  coin-paired    batching: paired: + each entry's forwarded hard negative (6 sequences)
  coin-inbatch   batching: in_batch with row_negatives off: the same 4 sequences as CIT
The COIN/CIT ratio of the default (reference) mode is printed first for each model (target <= 1.10), then the
table. Times are medians over interleaved repeats; ratios are against ``cit``.
Peak memory is measured per mode in a fresh process: CUDA max allocated, or on CPU the growth of the
process's RSS (sampled every 2 ms) over its RSS before the first step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

MODES = {"cit": {"contrastive": False},
         "coin": {"contrastive": True, "batching": "reference"},
         "coin-paired": {"contrastive": True, "row_negatives": True, "batching": "paired"},
         "coin-inbatch": {"contrastive": True, "row_negatives": False, "batching": "in_batch"}}
ENTRIES = 2  # the reference micro-batch
TARGET = 1.10


def _setup(model_name: str, entries: int = ENTRIES):
    from coinlib.core.models import load_tokenizer, tiny_llama
    from coinlib.core.params import load_params
    from coinlib.data.pairs import load_or_build
    from coinlib.train.batching import PairCollator, encode_entries
    from coinlib.train.trainer import (
        CoinTrainer,
        prepare_model,
        training_arguments,
        uses_row_negatives,
    )

    P = load_params("params/smoke.yaml")
    data = load_or_build(P, progress=False).select(range(entries))
    tok = load_tokenizer("smollm2-135m-instruct")
    model = tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id) if model_name == "tiny" else None
    model, tok = prepare_model(P, model, tok if model is not None else None)
    model.train()
    enc = encode_entries(data, tok, P.train.cutoff_len, P.train.append_eos, P.train.truncation)
    steps = {}
    for mode, overrides in MODES.items():
        t = P.train.model_copy(update={**overrides, "micro_batch_pairs": entries, "batch_size": entries,
                                       "report_to": []})
        collator = PairCollator(tok, negatives=uses_row_negatives(t))
        trainer = CoinTrainer(model=model, args=training_arguments(P.model_copy(update={"train": t})),
                              train_dataset=enc, data_collator=collator, coin=t)
        batch = collator([enc[i] for i in range(entries)])
        trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
        steps[mode] = (trainer, batch)
    return model, steps


def _step(model, trainer, batch) -> None:
    trainer.training_step(model, batch)
    model.zero_grad(set_to_none=True)


def time_modes(model_name: str, repeats: int) -> dict[str, float]:
    model, steps = _setup(model_name)
    for trainer, batch in steps.values():  # warm-up
        _step(model, trainer, batch)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(repeats):
        for mode, (trainer, batch) in steps.items():
            t0 = time.perf_counter()
            _step(model, trainer, batch)
            times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def peak_memory(model_name: str, mode: str) -> float:
    """MiB used by two steps of ``mode`` beyond what the process held before them."""
    model, steps = _setup(model_name)
    trainer, batch = steps[mode]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(2):
            _step(model, trainer, batch)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    import threading

    import psutil

    proc, peak, done = psutil.Process(), [0], threading.Event()
    before = proc.memory_info().rss

    def poll() -> None:  # sample RSS while the steps run
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    for _ in range(2):
        _step(model, trainer, batch)
    done.set()
    sampler.join()
    return max(0, peak[0] - before) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["tiny", "smollm2"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory(args.memory_child[0], args.memory_child[1])))
        return
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    medians = {name: time_modes(name, args.repeats) for name in args.models}
    for name, med in medians.items():
        ratio = med["coin"] / med["cit"]
        verdict = "meets" if ratio <= TARGET else "misses"
        print(f"{name}: COIN/CIT step time {ratio:.2f} (batching: reference, the same 4 sequences; {verdict} the "
              f"{TARGET:.2f} target); paired with forwarded negatives {med['coin-paired'] / med['cit']:.2f}; "
              f"in_batch without row negatives {med['coin-inbatch'] / med['cit']:.2f}", flush=True)
    print(f"{'model':8} {'mode':13} {'step s':>8} {'vs cit':>7} {'peak MiB':>9}")
    for name, med in medians.items():
        for mode, sec in med.items():
            out = subprocess.run([sys.executable, __file__, "--memory-child", name, mode],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"{name:8} {mode:13} {sec:8.3f} {sec / med['cit']:7.2f} {float(out):9.0f}", flush=True)


if __name__ == "__main__":
    main()
