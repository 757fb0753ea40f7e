"""Time a COIN training step against a CIT step on the same entries; report peak memory.

    .venv/bin/python benchmarks/train_step.py [--models tiny smollm2] [--entries 2] [--repeats 5]

Modes, all through ``CoinTrainer.training_step`` (forward + backward) on the same ``--entries`` entries of
the smoke data (``params/smoke.yaml``, built on first use):
  cit            generation loss only: originals + positives (2k sequences)
  coin           COIN as trained by default: + each entry's hard negative (3k sequences)
  coin-inbatch   COIN with row_negatives off: the same 2k sequences as CIT, in-batch negatives
Times are medians over interleaved repeats; ratios are against ``cit`` (target: coin-inbatch <= 1.10).
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

MODES = {"cit": {"contrastive": False}, "coin": {"contrastive": True, "row_negatives": True},
         "coin-inbatch": {"contrastive": True, "row_negatives": False, "batching": "in_batch"}}
TARGET = 1.10


def _setup(model_name: str, entries: int):
    from coinlib.core.models import load_tokenizer, tiny_llama
    from coinlib.core.params import load_params
    from coinlib.data.pairs import load_or_build
    from coinlib.train.batching import PairCollator, encode_entries
    from coinlib.train.trainer import CoinTrainer, prepare_model, training_arguments

    P = load_params("params/smoke.yaml")
    data = load_or_build(P, progress=False).select(range(entries))
    tok = load_tokenizer("smollm2-135m-instruct")
    model = tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id) if model_name == "tiny" else None
    model, tok = prepare_model(P, model, tok if model is not None else None)
    model.train()
    enc = encode_entries(data, tok, P.train.cutoff_len)
    steps = {}
    for mode, overrides in MODES.items():
        t = P.train.model_copy(update={**overrides, "micro_batch_pairs": entries, "batch_size": entries,
                                       "report_to": []})
        collator = PairCollator(tok, negatives=t.contrastive and t.row_negatives)
        trainer = CoinTrainer(model=model, args=training_arguments(P.model_copy(update={"train": t})),
                              train_dataset=enc, data_collator=collator, coin=t)
        batch = collator([enc[i] for i in range(entries)])
        trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
        steps[mode] = (trainer, batch)
    return model, steps


def _step(model, trainer, batch) -> None:
    trainer.training_step(model, batch)
    model.zero_grad(set_to_none=True)


def time_modes(model_name: str, entries: int, repeats: int) -> dict[str, float]:
    model, steps = _setup(model_name, entries)
    for trainer, batch in steps.values():  # warm-up
        _step(model, trainer, batch)
    times: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(repeats):
        for mode, (trainer, batch) in steps.items():
            t0 = time.perf_counter()
            _step(model, trainer, batch)
            times[mode].append(time.perf_counter() - t0)
    return {m: statistics.median(v) for m, v in times.items()}


def peak_memory(model_name: str, entries: int, mode: str) -> float:
    """MiB used by two steps of ``mode`` beyond what the process held before them."""
    model, steps = _setup(model_name, entries)
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
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--entries", type=int, default=2, help="entries per micro-batch (the reference uses 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory(args.memory_child[0], args.entries, args.memory_child[1])))
        return
    print(f"{'model':8} {'mode':13} {'step s':>8} {'vs cit':>7} {'peak MiB':>9}")
    for name in args.models:
        med = time_modes(name, args.entries, args.repeats)
        for mode, sec in med.items():
            out = subprocess.run([sys.executable, __file__, "--entries", str(args.entries), "--memory-child", name, mode],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"{name:8} {mode:13} {sec:8.3f} {sec / med['cit']:7.2f} {float(out):9.0f}", flush=True)
        ratio = med["coin-inbatch"] / med["cit"]
        verdict = "meets" if ratio <= TARGET else "misses"
        print(f"{name}: COIN/CIT on the same sequences {ratio:.2f} ({verdict} the {TARGET:.2f} target); "
              f"with row negatives {med['coin'] / med['cit']:.2f} (1.5x the sequences)", flush=True)


if __name__ == "__main__":
    main()
