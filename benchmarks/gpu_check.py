"""One-command GPU check: the paper recipe's training and evaluation paths on CUDA, with random weights.

    python benchmarks/gpu_check.py OUT_DIR                 # one CUDA GPU, < 6 minutes on an H200
    python benchmarks/gpu_check.py OUT_DIR --cpu-smoke     # the same code with tiny shapes on CPU, < 1 minute
    benchmarks/gpu_check.sh                                # stages what travels to the GPU machine (see README)

Needs no network and no downloaded weights: every model is built from a config (random weights costs the same
time and memory as trained ones); only a tokenizer is read (``--tokenizer``, default the offline SmolLM2 one).
Writes ``OUT_DIR/gpu_check.json`` and ``OUT_DIR/gpu_check.md``. Each section runs in its own try/except (an OOM or
a missing bitsandbytes is recorded and the rest still runs) and is skipped once the time budget is spent.

Sections, all through the project's own functions (``coinlib.core.models``, ``coinlib.train``,
``coinlib.evaluate.scoring``/``runner``):
  smollm2        SmolLM2-135M shapes, fp32: batched ``generate`` and ``rank`` equal one-at-a-time; their speed
                 against the plain greedy loop.
  runner         ``run_evaluation`` sharded over 2 ranks, run one after the other in this process (the model
                 loaded by ``load_model`` onto ``cuda:{LOCAL_RANK}``); merged predictions equal direct scoring.
  train_<v>      LLaMA-7B shapes: COIN and CIT optimizer steps of the paper recipe (2 pairs per micro-batch,
                 cutoff 256, LoRA r16 q/k/v/o) through ``prepare_model`` + ``CoinTrainer``, for v = fp16 (fp16
                 weights, fp16 autocast), bf16, nf4 (4-bit NF4 QLoRA via ``load_model`` and
                 ``prepare_model_for_kbit_training``), nf4_gc (the same with gradient checkpointing); smol_fp32
                 and smol_bf16 do the same with SmolLM2-135M shapes (params/paper-smollm2.yaml). Peak memory is
                 torch.cuda.max_memory_allocated over all steps, the first of which is padded to the cutoff
                 (worst case) and left out of the timing; seconds per optimizer step at batch 64 = the median of
                 the next TIMED_STEPS steps per micro-step x 32 (their range beside it); projected: one epoch
                 (781 steps) and the Table 4 sweep (6 COIN lambdas + CIT).
  eval_7b        LLaMA-7B shapes in fp16: ``rank`` and ``generate`` instances/s, and the projected evaluation of
                 3 models x 10 tasks x 30 instructions x 300 instances.
Training data are synthetic token ids (lengths drawn around the FLAN set's ~115 tokens per sequence); evaluation
contents are synthetic GLUE-like sentences.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coinlib.core.fileio import atomic_write_text  # noqa: E402

EPOCH_ENTRIES, BATCH, MICRO_PAIRS, CUTOFF = 52_002, 64, 2, 256
HELD_OUT = 2_000  # validation entries the reference code holds out of training
EPOCH_STEPS = (EPOCH_ENTRIES - HELD_OUT) // BATCH  # 781 optimizer steps in the paper's one epoch
TIMED_STEPS = 3  # optimizer steps timed after the first (warm-up, padded to the cutoff); the median is reported
SWEEP = {"COIN": 6, "CIT": 1}  # Table 4: lambda 1 .. 1e8 (COIN) and the CIT baseline, one epoch each
EVAL_INSTANCES = 3 * 10 * 30 * 300  # 3 models x 10 GLUE sets x 30 instructions x 300 instances (upper bound)
GIB = 2 ** 30

SHAPES = {
    "llama7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, rms_norm_eps=1e-6),
    "smollm2": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "tiny7b": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=160, vocab_size=1024, tie_word_embeddings=False, rms_norm_eps=1e-6),
    "tinysmol": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=128, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5),
}
#: name -> (model.dtype, model.load_in_4bit, model.gradient_checkpointing, train.mixed_precision) on CUDA.
VARIANTS = {
    "fp16": ("float16", False, False, "fp16"),
    "nf4_gc": ("float16", True, True, "fp16"),
    "bf16": ("bfloat16", False, False, "bf16"),
    "nf4": ("float16", True, False, "fp16"),
    "smol_fp32": ("float32", False, False, "no"),  # SmolLM2-135M shapes (params/paper-smollm2.yaml's model)
    "smol_bf16": ("bfloat16", False, False, "bf16"),
}
#: On CPU fp16 autocast does not exist (the project refuses it) and 4-bit computes in fp32.
CPU_VARIANTS = {"fp16": None, "nf4_gc": ("float32", True, True, "no"), "bf16": ("bfloat16", False, False, "bf16"),
                "nf4": ("float32", True, False, "no"), "smol_fp32": ("float32", False, False, "no"),
                "smol_bf16": ("bfloat16", False, False, "bf16")}

WORDS = ("the a film movie plot actor story was is not very quite rather good bad dull great awful charming slow "
         "moving funny long short man woman child city river house car dog cat plays reads runs sleeps eats "
         "yesterday today north south every some many few bright dark old new").split()
INSTRUCTIONS = {
    "sst2": ["Decide whether the sentiment of this review is positive or negative. Reply with one word. ",
             "Is the following sentence positive or negative? "],
    "rte": ["Does the first sentence entail the second? Answer entailment or not_entailment. ",
            "Tell me if sentence 2 follows from sentence 1 (entailment or not_entailment): "],
}


# ------------------------------------------------------------------------------------------------ bookkeeping
class Check:
    """Time budget, device, and the report every section writes into."""

    def __init__(self, out: Path, cpu_smoke: bool, budget_s: float, tokenizer: str, workdir: str | None):
        self.out, self.cpu_smoke, self.start, self.budget_s = out, cpu_smoke, time.perf_counter(), budget_s
        self.device = torch.device("cpu" if cpu_smoke else "cuda")
        self.cuda = self.device.type == "cuda"
        self.tokenizer_name = tokenizer
        self.workdir = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=workdir or _default_workdir(cpu_smoke)))
        self.sections: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, bool] = {}
        self._tok = None

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    @property
    def tokenizer(self):
        if self._tok is None:
            from coinlib.core.models import load_tokenizer

            self._tok = load_tokenizer(self.tokenizer_name)
        return self._tok

    def run(self, name: str, need_s: float, fn: Callable[[dict[str, Any]], None]) -> None:
        """Run one section unless fewer than ``need_s`` seconds of budget are left; record status and errors."""
        rec: dict[str, Any] = {"status": "skipped"}
        self.sections[name] = rec
        if self.left() < need_s:
            rec["reason"] = f"time budget: {self.left():.0f} s left, section needs about {need_s:.0f} s"
            print(f"[{name}] skipped ({rec['reason']})", flush=True)
            return
        t0 = time.perf_counter()
        print(f"[{name}] start ({self.left():.0f} s of budget left)", flush=True)
        try:
            fn(rec)
            rec["status"] = rec.get("status_override", "ok")
            rec.pop("status_override", None)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, the next section still runs
            rec["status"] = "error"
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
            rec["traceback"] = traceback.format_exc()[-3000:]
            print(f"[{name}] ERROR {rec['error']}", flush=True)
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            free_memory()
            print(f"[{name}] {rec['status']} in {rec['seconds']} s", flush=True)


def _default_workdir(cpu_smoke: bool) -> str | None:
    """/dev/shm when it can hold a 7B fp16 checkpoint (13.5 GB) with room to spare, else the system default."""
    shm = Path("/dev/shm")
    if not cpu_smoke and shm.is_dir() and shutil.disk_usage(shm).free > 40 * GIB:
        return str(shm)
    return None


def free_memory() -> None:
    """Release the last section's GPU memory (on CPU nothing: a full collection costs seconds there)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def sync(check: Check) -> None:
    if check.cuda:
        torch.cuda.synchronize()


def gib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / GIB, 2)


def peak_reset(check: Check) -> None:
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()


def peak(check: Check) -> float | None:
    return gib(torch.cuda.max_memory_allocated()) if check.cuda else None


def random_model(check: Check, shape: str, dtype: torch.dtype, seed: int, vocab_size: int | None = None):
    """A Llama of the named shapes with random weights, built directly on the check's device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    kw = dict(SHAPES[shape])
    if vocab_size:
        kw["vocab_size"] = vocab_size
    cfg = LlamaConfig(**kw, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(check.device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------------ data
def contents(task: str, n: int, seed: int) -> list[str]:
    """GLUE-like synthetic contents (SST-2: one sentence; RTE: a sentence pair), about 50-70 tokens each."""
    rng = random.Random(f"{task}-{seed}")

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    if task == "sst2":
        return [sentence(12, 45) for _ in range(n)]
    return [f"Sentence 1: {sentence(20, 40)} Sentence 2: {sentence(6, 14)}" for _ in range(n)]


class Entries(torch.utils.data.Dataset):
    """Encoded training entries (the columns ``PairCollator`` reads) without the ``datasets`` package."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]


def synthetic_entries(n: int, vocab: int, seed: int, worst_first: bool) -> Entries:
    """``n`` entries of random token ids; prompts ~N(110, 45) tokens, targets 1-3 tokens + EOS, all <= cutoff.

    With ``worst_first`` the first micro-batch's originals fill the cutoff (every row then pads to 256).
    """
    from coinlib.train.batching import IGNORE

    rng = random.Random(seed)

    def seq(length: int | None = None):
        p = length - 4 if length else min(CUTOFF - 4, max(24, int(rng.gauss(110, 45))))
        t = rng.randint(1, 3)
        prompt = [rng.randrange(3, vocab) for _ in range(p)]
        target = [rng.randrange(3, vocab) for _ in range(t)] + [2]
        return prompt + target, [IGNORE] * p + target

    rows = []
    for i in range(n):
        full = CUTOFF if worst_first and i < MICRO_PAIRS else None
        o_ids, o_lab = seq(full)
        p_ids, p_lab = seq()
        n_ids, _ = seq()
        rows.append({"task": "synthetic", "orig_ids": o_ids, "orig_labels": o_lab, "pos_ids": p_ids,
                     "pos_labels": p_lab, "neg_ids": n_ids})
    return Entries(rows)


# ------------------------------------------------------------------------------------------------ training
def recipe_params(check: Check, name: str, dtype: str, four_bit: bool, gc_on: bool, mp: str, contrastive: bool,
                  model_name: str, micro_steps: int, steps: int):
    """The paper recipe (``params/paper-alpaca7b.yaml``) with this variant's model and precision settings.

    The adapter is a fresh LoRA of the recipe's shape (alpaca-lora-7b cannot travel); the effective batch is
    ``micro_steps`` micro-batches (the timing is scaled to 64), and ``steps`` optimizer steps are run.
    """
    from coinlib.core.params import PARAMS_DIR, load_params

    P = load_params(PARAMS_DIR / "paper-alpaca7b.yaml")
    model = P.model.model_copy(update=dict(name=model_name, dtype=dtype, load_in_4bit=four_bit, adapter=None,
                                           gradient_checkpointing=gc_on))
    train = P.train.model_copy(update=dict(contrastive=contrastive, mixed_precision=mp, max_steps=steps,
                                           batch_size=MICRO_PAIRS * micro_steps, save_steps=10 ** 6,
                                           logging_steps=10 ** 6, report_to=[]))
    run = P.run.model_copy(update=dict(name=name, output_root=str(check.workdir / "runs")))
    return P.model_copy(update=dict(model=model, train=train, run=run))


def _timer_callback(check: Check):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time at the end of each optimizer step; no checkpoint is written."""

        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            sync(check)
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(check)
            self.ends.append(time.perf_counter())
            control.should_save = False

    return StepTimer()


def train_steps(check: Check, P, model, tok, entries: Entries, micro_steps: int):
    """``P.train.max_steps`` optimizer steps of ``CoinTrainer`` as ``train_on`` builds it; the first is warm-up,
    the median of the others is the step time. Returns (timings and memory, model, tok).

    ``model`` None loads ``P.model`` through ``prepare_model`` (``load_model``, then LoRA / k-bit preparation).
    """
    from coinlib.train.batching import PairCollator
    from coinlib.train.trainer import CoinTrainer, prepare_model, training_arguments

    peak_reset(check)
    model, tok = prepare_model(P, model, tok)
    args = training_arguments(P)
    args.disable_tqdm = True
    t = P.train
    negatives = t.contrastive and t.row_negatives
    timer = _timer_callback(check)
    trainer = CoinTrainer(model=model, args=args, train_dataset=entries, processing_class=tok,
                          data_collator=PairCollator(tok, negatives=negatives), callbacks=[timer], coin=t)
    trainer.train()
    ends, steps = timer.ends, P.train.max_steps
    if len(ends) != steps:
        raise RuntimeError(f"expected {steps} optimizer steps, the trainer ran {len(ends)}")
    durations = [b - a for a, b in zip(ends, ends[1:])]  # steps 2..n; step 1 (warm-up) is left out
    collate = PairCollator(tok, negatives=negatives)
    timed = [entries[i] for i in range(MICRO_PAIRS * micro_steps, steps * MICRO_PAIRS * micro_steps)]
    shapes = [collate(timed[j:j + MICRO_PAIRS])["input_ids"].shape for j in range(0, len(timed), MICRO_PAIRS)]
    padded = sum(r * c for r, c in shapes)
    scale = BATCH // MICRO_PAIRS / micro_steps  # a batch-64 step is this many timed steps
    per_step = statistics.median(durations) * scale
    per_micro = per_step / (BATCH // MICRO_PAIRS)
    losses = [h["train_loss"] for h in trainer.state.log_history if "train_loss" in h]
    out = {
        "peak_gib": peak(check), "first_step_s": round(ends[0] - timer.begin, 2),
        "s_per_micro_step": round(per_micro, 4), "s_per_step_b64": round(per_step, 2),
        "epoch_h": round(per_step * EPOCH_STEPS / 3600, 2), "sequences_per_micro_step": shapes[0][0],
        "s_per_step_b64_range": [round(min(durations) * scale, 2), round(max(durations) * scale, 2)],
        "timed_steps": len(durations), "padded_tokens_per_s": round(padded / sum(durations)),
        "train_loss": losses[-1] if losses else None,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    del trainer
    return out, model, tok


def section_train(check: Check, variant: str, folder_holder: dict[str, Path]):
    def run(rec: dict[str, Any]) -> None:
        spec = (CPU_VARIANTS if check.cpu_smoke else VARIANTS)[variant]
        if spec is None:
            rec["status_override"] = "skipped"
            rec["reason"] = "fp16 mixed precision needs CUDA (coinlib refuses it on CPU)"
            return
        dtype, four_bit, gc_on, mp = spec
        small = variant.startswith("smol")
        shape = {(False, True): "tiny7b", (False, False): "llama7b", (True, True): "tinysmol",
                 (True, False): "smollm2"}[small, check.cpu_smoke]
        micro_steps = 2 if check.cpu_smoke else 8 if small else 4  # a small model's step needs more to time
        rec.update(shape=shape, dtype=dtype, load_in_4bit=four_bit, gradient_checkpointing=gc_on,
                   mixed_precision=mp, micro_steps_timed=micro_steps)
        tok = check.tokenizer
        vocab = SHAPES[shape]["vocab_size"]
        t0 = time.perf_counter()
        model = None
        if four_bit:  # the first prepare_model loads it: load_model with BitsAndBytesConfig (NF4, double quant)
            if "fp16" not in folder_holder:
                folder_holder["fp16"] = save_random_checkpoint(check, shape, tok)
        else:
            model = random_model(check, shape, {"float16": torch.float16, "bfloat16": torch.bfloat16,
                                                "float32": torch.float32}[dtype], seed=0)
            if variant == "fp16" and "fp16" not in folder_holder:
                folder_holder["fp16"] = save_random_checkpoint(check, shape, tok, model)
        rec["build_s"] = round(time.perf_counter() - t0, 1)
        model_tok = tok if model is not None else None
        for mode, contrastive in (("COIN", True), ("CIT", False)):
            try:
                P = recipe_params(check, f"{variant}-{mode}", dtype, four_bit, gc_on, mp, contrastive,
                                  str(folder_holder.get("fp16", "unused")), micro_steps, 1 + TIMED_STEPS)
                entries = synthetic_entries(MICRO_PAIRS * micro_steps * (1 + TIMED_STEPS), vocab, seed=1,
                                            worst_first=True)
                rec[mode], model, model_tok = train_steps(check, P, model, model_tok, entries, micro_steps)
            except Exception as exc:  # noqa: BLE001 - the other mode still runs
                rec[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}",
                             "traceback": traceback.format_exc()[-2000:]}
                rec["status_override"] = "error"
            free_memory()
        if model is not None:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            rec["linear4bit_modules"] = sum(type(m).__name__ == "Linear4bit" and type(m).__module__.startswith(
                "bitsandbytes") for m in base.modules())  # bitsandbytes' own layers, not peft's wrappers
            rec["checkpointing_on"] = bool(getattr(base, "is_gradient_checkpointing", False))
            rec["device"] = str(next(base.parameters()).device)
        if "s_per_step_b64" in rec.get("COIN", {}) and "s_per_step_b64" in rec.get("CIT", {}):
            sweep = (SWEEP["COIN"] * rec["COIN"]["s_per_step_b64"] + SWEEP["CIT"] * rec["CIT"]["s_per_step_b64"])
            rec["sweep_h"] = round(sweep * EPOCH_STEPS / 3600, 1)
        if four_bit:
            check.checks[f"train_{variant}_4bit_linear_layers"] = rec.get("linear4bit_modules", 0) > 0
        ok = all("s_per_step_b64" in rec.get(m, {}) and rec[m]["train_loss"] is not None
                 and math.isfinite(rec[m]["train_loss"]) for m in ("COIN", "CIT"))
        check.checks[f"train_{variant}_coin_and_cit_steps_finite"] = ok
        if gc_on:
            check.checks[f"train_{variant}_gradient_checkpointing_on"] = rec.get("checkpointing_on", False)
        del model
        free_memory()

    return run


def save_random_checkpoint(check: Check, shape: str, tok, model=None) -> Path:
    """Random fp16 weights of ``shape`` saved as safetensors with the tokenizer (what ``load_model`` reads)."""
    folder = check.workdir / f"{shape}-fp16"
    own = model is None
    if own:
        model = random_model(check, shape, torch.float16 if check.cuda else torch.float32, seed=0)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if own:
        del model
        free_memory()
    return folder


# ------------------------------------------------------------------------------------------------ evaluation
def _separate_rank(model, tok, text: str, labels, fmt: str) -> list[float]:
    """Log-likelihood of each label word after ``text``, one unpadded forward pass per label (reference)."""
    from coinlib.evaluate.scoring import label_continuation

    ids = tok(text, add_special_tokens=fmt != "chat")["input_ids"]
    device = next(model.parameters()).device
    scores = []
    with torch.inference_mode():
        for lab in labels:
            cont = tok(label_continuation(lab, fmt), add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids + cont], device=device)).logits[0].float()
            logprobs = torch.log_softmax(logits, -1)
            scores.append(sum(logprobs[len(ids) - 1 + t, c].item() for t, c in enumerate(cont)))
    return scores


def section_smollm2(check: Check, state: dict[str, Any]):
    def run(rec: dict[str, Any]) -> None:
        from coinlib.core.tasks import get_task
        from coinlib.evaluate.scoring import (
            format_input,
            parse_label,
            plain_greedy,
            score_instruction,
        )

        tok, fmt = check.tokenizer, "chat"
        shape = "tinysmol" if check.cpu_smoke else "smollm2"
        n_eq, n_speed, n_plain = (4, 8, 2) if check.cpu_smoke else (48, 128, 32)
        model = random_model(check, shape, torch.float32, seed=0, vocab_size=len(tok))
        rec.update(shape=shape, dtype="float32", format=fmt, device=str(next(model.parameters()).device))
        # equality: batched vs one at a time, on one instruction per task
        gen_same = gen_total = rank_same = rank_total = 0
        max_diff = 0.0
        for task in ("sst2", "rte"):
            labels, instr, cs = get_task(task).labels, INSTRUCTIONS[task][0], contents(task, n_eq, seed=0)
            got = score_instruction(model, tok, instr, cs, labels, fmt, "generate", batch_size=16, early_stop=False)
            plain = [plain_greedy(model, tok, format_input(instr, c, fmt, tok), fmt) for c in cs]
            gen_same += sum(g.raw_output == p for g, p in zip(got, plain))
            gen_total += len(cs)
            ranked = score_instruction(model, tok, instr, cs, labels, fmt, "rank", batch_size=16)
            for c, r in zip(cs, ranked):
                ref = _separate_rank(model, tok, format_input(instr, c, fmt, tok), labels, fmt)
                got_scores = json.loads(r.label_scores)
                max_diff = max(max_diff, *(abs(got_scores[lab] - v) for lab, v in zip(labels, ref)))
                rank_same += r.prediction == labels[max(range(len(labels)), key=ref.__getitem__)]
                rank_total += 1
        rec["generate_equal"] = f"{gen_same}/{gen_total}"
        rec["rank_equal"] = f"{rank_same}/{rank_total}"
        rec["rank_max_abs_diff"] = round(max_diff, 6)
        check.checks["smollm2_generate_equals_one_at_a_time"] = gen_same == gen_total
        check.checks["smollm2_rank_equals_separate_scoring"] = rank_same == rank_total
        # throughput: 2 tasks x 2 instructions
        units = [(t, i) for t in ("sst2", "rte") for i in range(2)]
        rates = {}
        for name, kw in (("generate", dict(mode="generate")), ("rank", dict(mode="rank"))):
            sync(check)
            t0 = time.perf_counter()
            for task, i in units:
                score_instruction(model, tok, INSTRUCTIONS[task][i], contents(task, n_speed, 1), get_task(task).labels,
                                  fmt, batch_size=16, **kw)
            sync(check)
            rates[name] = len(units) * n_speed / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for task, i in units:
            for c in contents(task, n_speed, 1)[:n_plain]:
                parse_label(plain_greedy(model, tok, format_input(INSTRUCTIONS[task][i], c, fmt, tok), fmt),
                            get_task(task).labels)
        sync(check)
        rates["plain_loop"] = len(units) * n_plain / (time.perf_counter() - t0)
        rec["instances_per_s"] = {k: round(v, 1) for k, v in rates.items()}
        rec["x_plain"] = {k: round(v / rates["plain_loop"], 1) for k, v in rates.items() if k != "plain_loop"}
        folder = check.workdir / "smollm2-random"
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        state["smol_folder"] = folder
        state["smol_n"] = n_eq

    return run


def section_runner(check: Check, state: dict[str, Any]):
    def run(rec: dict[str, Any]) -> None:
        import pandas as pd
        import yaml

        from coinlib.core.params import validate
        from coinlib.core.tasks import get_task
        from coinlib.evaluate import runner
        from coinlib.evaluate.scoring import score_instruction

        folder, n = state.get("smol_folder"), state.get("smol_n", 6)
        if folder is None:
            raise RuntimeError("needs the smollm2 section's saved model, which did not run")
        tasks = ("sst2", "rte")
        prompts = check.workdir / "prompts.yaml"
        prompts.write_text(yaml.safe_dump({"clean": {t: INSTRUCTIONS[t] for t in tasks}}), encoding="utf-8")
        frames = {t: pd.DataFrame({"instance_id": [str(i) for i in range(n)], "content": contents(t, n, seed=0),
                                   "label": [i % 2 for i in range(n)],
                                   "gold": [get_task(t).labels[i % 2] for i in range(n)]}) for t in tasks}
        P = validate({"run": {"name": "runner", "output_root": str(check.workdir / "runs")},
                      "model": {"name": str(folder), "dtype": "float32"},
                      "evaluate": {"tasks": list(tasks), "n_per_task": n, "groups": ["clean"], "prompt_set": str(prompts),
                                   "input_format": "chat", "scoring": "rank", "batch_size": 16, "adapters": [],
                                   "n_boot": 50}})
        devices: list[str] = []
        original_load = runner._load

        def load_and_record(P_, spec):
            model, tok = original_load(P_, spec)
            devices.append(str(next(model.parameters()).device))
            return model, tok

        with mock.patch.object(runner, "load_task", lambda t, n_, mirror=None, sample="shared": frames[t]), \
                mock.patch.object(runner, "_load", load_and_record), mock.patch.dict(os.environ, {"LOCAL_RANK": "0"}):
            assert runner.run_evaluation(P, rank=1, world_size=2) is None  # rank 1: its shard only
            tables = runner.run_evaluation(P, rank=0, world_size=2)  # rank 0: its shard, then the merge
        preds = tables.predictions
        rec["devices"] = devices
        rec["rows"] = len(preds)
        from coinlib.core.models import load_model
        from coinlib.core.params import ModelParams

        model, tok = load_model(ModelParams(name=str(folder)), device=check.device)
        model.eval()
        same = total = 0
        for t in tasks:
            for i, instr in enumerate(INSTRUCTIONS[t]):
                direct = score_instruction(model, tok, instr, frames[t]["content"].tolist(), get_task(t).labels,
                                           "chat", "rank", batch_size=16)
                merged = preds[(preds.task == t) & (preds.instruction_id == i)].sort_values("instance_id",
                                                                                          key=lambda s: s.astype(int))
                same += sum(a == b.prediction for a, b in zip(merged["prediction"], direct))
                total += len(direct)
        rec["merged_equal_direct"] = f"{same}/{total}"
        expected_device = "cuda:0" if check.cuda else "cpu"
        check.checks["runner_two_shards_merged_equal_direct"] = same == total == len(preds) == 2 * len(tasks) * n
        check.checks["runner_model_on_expected_device"] = devices == [expected_device, expected_device]

    return run


def section_eval7b(check: Check):
    def run(rec: dict[str, Any]) -> None:
        from coinlib.core.tasks import get_task
        from coinlib.evaluate.scoring import (
            format_input,
            plain_greedy,
            score_instruction,
        )

        tok, fmt = check.tokenizer, "paper"
        shape = "tiny7b" if check.cpu_smoke else "llama7b"
        dtype = torch.float32 if check.cpu_smoke else torch.float16
        n, n_plain = (8, 2) if check.cpu_smoke else (256, 8)
        # the tokenizer's ids need its vocabulary; logits are computed only where used, so the cost is LLaMA's
        model = random_model(check, shape, dtype, seed=0, vocab_size=max(len(tok), SHAPES[shape]["vocab_size"]))
        rec.update(shape=shape, dtype=str(dtype).replace("torch.", ""), format=fmt, vocab_size=len(tok),
                   instances=n)
        rates = {}
        for name, mode, bs in (("rank_b16", "rank", 16), ("rank_b64", "rank", 64),
                               ("generate_b16", "generate", 16), ("generate_b64", "generate", 64)):
            sync(check)
            t0 = time.perf_counter()
            for task in ("sst2", "rte"):
                score_instruction(model, tok, INSTRUCTIONS[task][0], contents(task, n, 2), get_task(task).labels,
                                  fmt, mode, batch_size=bs)
            sync(check)
            rates[name] = 2 * n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for task in ("sst2", "rte"):
            for c in contents(task, n_plain, 2):
                plain_greedy(model, tok, format_input(INSTRUCTIONS[task][0], c, fmt, tok), fmt)
        sync(check)
        rates["plain_loop"] = 2 * n_plain / (time.perf_counter() - t0)
        rec["instances_per_s"] = {k: round(v, 1) for k, v in rates.items()}
        rec["peak_gib"] = peak(check)
        best = {m: max(v for k, v in rates.items() if k.startswith(m)) for m in ("rank", "generate")}
        rec["projected_eval_h"] = {m: round(EVAL_INSTANCES / v / 3600, 2) for m, v in best.items()}

    return run


# ------------------------------------------------------------------------------------------------ report
def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    return out


def markdown(doc: dict[str, Any]) -> str:
    m, s = doc["meta"], doc["sections"]
    lines = [f"# GPU check ({'CPU smoke' if m['cpu_smoke'] else m['device_name']})", "",
             f"{m['date']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) +
             f"; {m['elapsed_s']} s of a {m['budget_s']} s budget.", "",
             "## Training: optimizer steps of the paper recipe (random weights)", "",
             "| variant | mode | peak GiB | s / micro-step | s / step at batch 64 (range) | epoch (781 steps), h | "
             "Table 4 sweep, h | status |", "|---|---|---|---|---|---|---|---|"]
    for name, rec in s.items():
        if not name.startswith("train_"):
            continue
        for mode in ("COIN", "CIT"):
            r = rec.get(mode, {})
            status = r.get("error") or rec.get("reason") or rec.get("error") or rec["status"]
            spread = tuple(r["s_per_step_b64_range"]) if "s_per_step_b64_range" in r else ""
            lines.append(f"| {name[6:]} | {mode} | {r.get('peak_gib', '-')} | {r.get('s_per_micro_step', '-')} | "
                         f"{r.get('s_per_step_b64', '-')} {spread} | {r.get('epoch_h', '-')} | "
                         f"{rec.get('sweep_h', '-') if mode == 'COIN' else ''} | {str(status)[:80]} |")
    lines += ["", "## Evaluation", "", "| section | instances/s | other | status |", "|---|---|---|---|"]
    for name in ("smollm2", "eval_7b", "runner"):
        rec = s.get(name, {})
        other = {k: rec[k] for k in ("generate_equal", "rank_equal", "rank_max_abs_diff", "x_plain",
                                     "projected_eval_h", "merged_equal_direct", "devices") if k in rec}
        lines.append(f"| {name} | {rec.get('instances_per_s', '-')} | {other or '-'} | "
                     f"{rec.get('error') or rec.get('reason') or rec.get('status', 'missing')} |")
    lines += ["", "## Checks", ""] + [f"- {k}: {'PASS' if v else 'FAIL'}" for k, v in doc["checks"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (CI keeps the script working)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 330; smoke 50)")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer folder or model alias")
    ap.add_argument("--workdir", default=None, help="scratch folder for random checkpoints (default /dev/shm or tmp)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these sections")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --cpu-smoke", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.cpu_smoke:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 equality checks compare like with like
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.cpu_smoke, args.budget or (50.0 if args.cpu_smoke else 330.0), args.tokenizer,
                  args.workdir)
    state: dict[str, Any] = {}
    folders: dict[str, Path] = {}
    big = 1 if args.cpu_smoke else 0  # on CPU every section is small: need 1 s of budget, not minutes
    plan = [("smollm2", 3 if big else 45, section_smollm2(check, state)),
            ("runner", 2 if big else 20, section_runner(check, state)),
            ("train_fp16", 2 if big else 60, section_train(check, "fp16", folders)),
            ("train_nf4_gc", 2 if big else 60, section_train(check, "nf4_gc", folders)),
            ("train_bf16", 2 if big else 35, section_train(check, "bf16", folders)),
            ("train_nf4", 2 if big else 50, section_train(check, "nf4", folders)),
            ("train_smol_fp32", 2 if big else 15, section_train(check, "smol_fp32", folders)),
            ("train_smol_bf16", 2 if big else 15, section_train(check, "smol_bf16", folders)),
            ("eval_7b", 2 if big else 30, section_eval7b(check))]
    def write_report() -> dict[str, Any]:
        meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu_smoke": args.cpu_smoke,
                "device_name": torch.cuda.get_device_name(0) if check.cuda else platform.processor() or "cpu",
                "versions": versions(), "budget_s": check.budget_s,
                "elapsed_s": round(time.perf_counter() - check.start, 1),
                "recipe": {"batch": BATCH, "micro_batch_pairs": MICRO_PAIRS, "cutoff": CUTOFF,
                           "epoch_steps": EPOCH_STEPS, "sweep_runs": SWEEP, "lora": "r16 alpha16 q/k/v/o",
                           "eval_instances": EVAL_INSTANCES}}
        doc = {"meta": meta, "sections": check.sections, "checks": check.checks}
        atomic_write_text(out / "gpu_check.json", json.dumps(doc, indent=2, default=str))
        atomic_write_text(out / "gpu_check.md", markdown(doc))
        return doc

    try:
        for name, need, fn in plan:
            if args.only and name not in args.only:
                continue
            check.run(name, need, fn)
            write_report()  # after every section: a run stopped from outside still leaves its results
    finally:
        shutil.rmtree(check.workdir, ignore_errors=True)
    doc = write_report()
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
