"""COIN training on the HF Trainer: generation loss plus the capped, weighted InfoNCE term (paper 3.3).

    train(P)                      # data from coinlib.data.pairs, model from P.model; returns the adapter folder
    train_on(P, dataset, model)   # any contrastive dataset / preloaded model (tests, notebooks)
    python -m coinlib.train params/X.yaml            # command line; `torchrun --nproc-per-node N -m ...` for DDP

Per micro-batch of ``k`` entries the model runs once over originals and positives (and, in the ``paired`` and
``in_batch`` modes, each entry's hard negative). ``train.batching: reference`` (the default, as the reference
code) runs micro-batches of 2 entries that are each other's hard negatives, in data order: the InfoNCE
candidates are that micro-batch's rows. L_ent = token-mean CE on the output tokens of the originals + the same
for the positives (the reference code sums the two); L_ctr = symmetric InfoNCE over last-token final-layer
hidden states; L = L_ent + w * L_ctr with the reference code's weight (:func:`coinlib.train.loss.contrastive_weight`).
``train.contrastive: false`` is the CIT baseline (L_ent only, no negatives forwarded). Outputs (``P.run_dir``):
``adapter/`` (safetensors), ``params.yaml``, ``train_log.csv``, ``checkpoints/`` (rerunning resumes from the last
one), ``tensorboard/``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from coinlib.core.fileio import atomic_folder, atomic_write, atomic_write_text
from coinlib.core.models import load_model
from coinlib.core.params import Params, TrainParams, add_set_argument, load_params, load_params_or_exit
from coinlib.data.pairs import load_or_build
from coinlib.train.batching import (
    IGNORE,
    PairCollator,
    PairSampler,
    check_mutual_pairs,
    encode_entries,
)
from coinlib.train.lora import attach_lora
from coinlib.train.loss import coin_loss, gather_embeddings, symmetric_info_nce
from coinlib.core.pooling import last_token_pool

log = logging.getLogger(__name__)

LOG_COLUMNS = ["step", "loss", "loss_ent", "loss_ctr", "weight", "cos_pos", "cos_neg", "learning_rate", "grad_norm",
               "epoch"]
#: Columns ``train.balance: grad_norm`` adds (means over the logging window's optimizer steps).
BALANCE_COLUMNS = ["balance_scale", "grad_norm_gen", "grad_norm_ctr"]


class NonFiniteLossError(FloatingPointError):
    """The generation loss became NaN or infinite; training stops before any weight or checkpoint changes."""


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (output) tokens of all rows.

    Rows whose output was cut away entirely (``train.truncation: right``) have no labelled token; when no row has
    one the result is 0 (connected to the graph) rather than the NaN of an empty mean.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not bool((shift_labels != IGNORE).any()):
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE)


def supervised_ce(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`token_ce` with the output layer applied only where the next token is labelled.

    ``hidden`` ``[rows, seq, d]`` are the final (normed) hidden states. The prompt is masked, so the output layer
    and the softmax over the vocabulary run on the output tokens alone: the same loss, a fraction of the work.
    """
    shift_labels = labels[:, 1:]
    supervised = shift_labels != IGNORE
    if not bool(supervised.any()):
        return hidden.sum() * 0.0
    states = hidden[:, :-1][supervised]
    weight = getattr(head, "weight", None)
    if weight is not None and not torch.is_autocast_enabled(states.device.type):
        states = states.to(weight.dtype)
    return F.cross_entropy(head(states).float(), shift_labels[supervised])


#: Config attributes that change logits after the output layer (softcapping, scaling): such models are trained
#: through their own full output layer.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def output_layer(model) -> torch.nn.Module | None:
    """The output layer to apply at supervised positions only, or None when the model's logits are more than
    ``output_layer(final hidden state)`` (or it does not say), so the full forward must give them."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    get = getattr(inner, "get_output_embeddings", None)
    config = getattr(inner, "config", None)
    if get is None or config is None:
        return None
    cfg = getattr(config, "get_text_config", lambda: config)()
    if any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in LOGIT_POSTPROCESSING):
        return None
    head = get()
    return head if isinstance(head, torch.nn.Module) else None


def uses_row_negatives(t: TrainParams) -> bool:
    """Whether each entry's hard negative is forwarded as an extra row (``paired``/``in_batch`` with row_negatives)."""
    return t.contrastive and t.row_negatives and t.batching != "reference"


def shuffles(t: TrainParams) -> bool:
    """Whether micro-batches are shuffled: ``train.shuffle``, else never for reference and always otherwise."""
    return (t.batching != "reference") if t.shuffle is None else t.shuffle


class CoinTrainer(Trainer):
    """HF Trainer computing the COIN loss; logs loss_ent, loss_ctr, weight, cos_pos and cos_neg."""

    def __init__(self, *args: Any, coin: TrainParams, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.coin = coin
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: let the Trainer divide by GA
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self._step_sums: dict[str, float] = defaultdict(float)  # per optimizer step (train.balance)
        self._steps = 0
        self._grads: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # the step's g_ent, g_ctr so far

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        c = self.coin
        return PairSampler(ds["task"], c.micro_batch_pairs, self.args.seed, shuffles(c),
                           c.group_by_task and c.batching == "in_batch")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _, _, out = self._losses(model, inputs)
        return (loss, out) if return_outputs else loss

    def _losses(self, model, inputs):
        """``(L, L_ent, w * L_ctr or None, model output)`` of one micro-batch; records the logged statistics.

        ``L`` is :func:`coin_loss`'s total (``L_ent`` for CIT or a dropped non-finite ``L_ctr``); the middle two are
        its terms, for ``train.balance``.
        """
        c = self.coin
        groups = 3 if uses_row_negatives(c) else 2
        mask = inputs["attention_mask"]
        k = mask.shape[0] // groups
        labels = inputs["labels"]
        head = output_layer(model)
        if head is None:  # logits from the model itself, at every position
            out = model(input_ids=inputs["input_ids"], attention_mask=mask, output_hidden_states=c.contrastive,
                        use_cache=False)
            ce = token_ce(out.logits[:k], labels[:k]) + token_ce(out.logits[k:2 * k], labels[k:2 * k])
        else:  # final hidden states, the output layer at the supervised positions only
            out = model(input_ids=inputs["input_ids"], attention_mask=mask, output_hidden_states=True,
                        logits_to_keep=1, use_cache=False)
            hidden = out.hidden_states[-1]
            with self._autocast(hidden.device):
                ce = supervised_ce(head, hidden[:k], labels[:k]) + supervised_ce(head, hidden[k:2 * k],
                                                                                  labels[k:2 * k])
        if not torch.isfinite(ce):
            raise NonFiniteLossError(
                f"generation loss is {ce.item()} at step {self.state.global_step}; nothing of this step was "
                f"applied and checkpoints in {self.args.output_dir} are intact. Fix: lower train.learning_rate, "
                "use model.dtype float32 or bfloat16 instead of float16, or check the data for empty targets."
            )
        stats = {"loss_ent": ce.item()}
        loss, term = ce, None
        if c.contrastive:
            h = last_token_pool(out.hidden_states[-1], mask).float()
            ctr, cos = self._contrastive(h[:k], h[k:2 * k], h[2 * k:] if groups == 3 else None)
            loss, w = coin_loss(ce, ctr, c.lambda_)
            if loss is not ce:  # the term is in the graph (coin_loss drops a non-finite L_ctr)
                term = w.to(ce.dtype) * ctr.to(ce.dtype)
            stats.update(loss_ctr=ctr.item(), weight=w.item(), **cos)
        for key, v in stats.items():
            self._sums[key] += v
        self._count += 1
        return loss, ce, term, out

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, except with ``train.balance: grad_norm`` (:meth:`_balanced_step`)."""
        if self.coin.balance == "none" or not self.coin.contrastive:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._balanced_step(model, inputs)

    def _balanced_step(self, model, inputs) -> torch.Tensor:
        """Forward once, then the gradients of ``L_ent`` and of ``w * L_ctr`` separately (``torch.autograd.grad``
        over the trainable weights, the graph kept for the second), each summed over the optimizer step's
        micro-batches (divided by the accumulation steps, as the Trainer divides the loss). On the step's last
        micro-batch the weights' ``.grad`` becomes ``g_ent + s * g_ctr`` with ``s = min(1, |g_ent| / |g_ctr|)``
        (norms over all trainable weights); the Trainer then clips and steps as usual.

        Per optimizer step rather than per micro-batch: the bound is on the gradient the optimizer applies, and it
        does not depend on how the step is split into micro-batches (reference batching: 2 entries each, whose
        contrastive gradients partly cancel in the sum).
        """
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss, ce, term, _ = self._losses(model, inputs)
        del inputs
        ga = self.current_gradient_accumulation_steps
        scaler = getattr(self.accelerator, "scaler", None)  # fp16: the optimizer unscales what it finds in .grad
        scaled = (lambda x: scaler.scale(x)) if scaler is not None else (lambda x: x)
        params = [p for p in model.parameters() if p.requires_grad]
        g_ent = torch.autograd.grad(scaled(ce / ga), params, retain_graph=term is not None, allow_unused=True)
        g_ctr = (torch.autograd.grad(scaled(term / ga), params, allow_unused=True) if term is not None
                 else (None,) * len(params))
        if self._grads is None:
            self._grads = ([torch.zeros_like(p, dtype=torch.float32) for p in params],
                           [torch.zeros_like(p, dtype=torch.float32) for p in params])
        for acc, grads in zip(self._grads, (g_ent, g_ctr)):
            for a, g in zip(acc, grads):
                if g is not None:
                    a.add_(g.float())
        if self.accelerator.sync_gradients:  # the step's last micro-batch: combine before clipping
            self._apply_balanced(params)
        return loss.detach() / ga

    def _apply_balanced(self, params: list[torch.Tensor]) -> None:
        gen, ctr = self._grads
        self._grads = None
        norm_gen = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gen]))
        norm_ctr = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ctr]))
        # |g_ctr| = 0 gives inf, clamped to 1 (nothing to scale); a non-finite norm (fp16 overflow) is left for the
        # optimizer's overflow check rather than hidden
        scale = torch.clamp(norm_gen / norm_ctr, max=1.0)
        for p, g, c in zip(params, gen, ctr):
            combined = (g + scale * c).to(p.dtype)
            p.grad = combined if p.grad is None else p.grad + combined
        unscale = float(self.accelerator.scaler.get_scale()) if getattr(self.accelerator, "scaler", None) else 1.0
        for key, v in (("balance_scale", scale.item()), ("grad_norm_gen", norm_gen.item() / unscale),
                       ("grad_norm_ctr", norm_ctr.item() / unscale)):
            self._step_sums[key] += v
        self._steps += 1

    def _autocast(self, device: torch.device):
        """The mixed-precision context the Trainer runs the model's forward in, for work done outside it."""
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def _contrastive(self, orig: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None):
        c = self.coin
        with torch.no_grad():
            o, p = F.normalize(orig, dim=-1), F.normalize(pos, dim=-1)
            cos = {"cos_pos": (o * p).sum(-1).mean().item()}
            if neg is not None:
                cos["cos_neg"] = (o * F.normalize(neg, dim=-1)).sum(-1).mean().item()
            elif o.shape[0] > 1:
                sim = o @ p.T
                off = ~torch.eye(o.shape[0], dtype=torch.bool, device=o.device)
                cos["cos_neg"] = sim[off].mean().item()
        if c.batching == "paired" and neg is not None:
            return symmetric_info_nce(orig, pos, c.temperature, neg[:, None, :], in_batch=False), cos
        if c.batching == "reference":  # candidates: this micro-batch's rows, both directions (no gather)
            return symmetric_info_nce(orig, pos, c.temperature, in_batch=True), cos
        if c.gather_across_processes:
            all_orig, offset = gather_embeddings(orig)
            all_pos, _ = gather_embeddings(pos)
            all_neg = gather_embeddings(neg)[0] if neg is not None else None
            ctr = symmetric_info_nce(orig, pos, c.temperature, all_neg, True, all_orig, all_pos, offset)
            return ctr, cos
        return symmetric_info_nce(orig, pos, c.temperature, neg, in_batch=True), cos

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._count:
            for key, v in self._sums.items():
                logs[key] = v / self._count
            self._sums.clear()
            self._count = 0
        if "loss" in logs and self._steps:
            for key, v in self._step_sums.items():
                logs[key] = v / self._steps
            self._step_sums.clear()
            self._steps = 0
        super().log(logs, start_time)


def mixed_precision(P: Params) -> str:
    """'bf16', 'fp16' or 'no', with a clear error for fp16 without CUDA."""
    mp = P.train.mixed_precision
    if mp == "auto":
        mp = {"bfloat16": "bf16", "float16": "fp16"}.get(P.model.dtype, "no")
    if mp == "fp16" and not torch.cuda.is_available():
        raise ValueError("fp16 mixed precision needs a CUDA GPU. Fix: set model.dtype to float32 or bfloat16 "
                         "(or train.mixed_precision: no) on CPU.")
    return mp


def training_arguments(P: Params, world_size: int | None = None) -> TrainingArguments:
    """TrainingArguments for ``P``; the effective batch ``train.batch_size`` = micro x accumulation x processes."""
    t = P.train
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_step = t.micro_batch_pairs * world
    if t.batch_size % per_step:
        raise ValueError(
            f"train.batch_size={t.batch_size} is not a multiple of micro_batch_pairs x processes = {per_step}. "
            "Fix: choose a batch_size divisible by it."
        )
    if t.batching == "reference" and t.micro_batch_pairs != 2:
        raise ValueError(
            f"train.batching=reference runs micro-batches of exactly 2 entries (a pair of mutual hard negatives), as "
            f"the reference code; got micro_batch_pairs={t.micro_batch_pairs}. Fix: set train.micro_batch_pairs: 2, "
            "or use train.batching: in_batch for larger candidate pools.")
    if t.batching == "reference" and t.shuffle:
        raise ValueError("train.batching=reference keeps the data order (pairs of mutual hard negatives, as the "
                         "reference code); train.shuffle=true would break the pairs. Fix: leave train.shuffle unset "
                         "(null), or use train.batching: paired or in_batch.")
    if t.batching == "paired" and not t.row_negatives and t.micro_batch_pairs < 2:
        raise ValueError("train.row_negatives=false needs micro_batch_pairs >= 2 (the other entries are the negatives)")
    if t.balance != "none" and t.contrastive and world > 1:
        raise ValueError(
            f"train.balance={t.balance} runs on one process only: it takes its gradients with torch.autograd.grad, "
            f"which bypasses the gradient averaging of the {world} processes. Fix: train on one process, or set "
            "train.balance: none.")
    if "wandb" in t.report_to:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ValueError("train.report_to includes wandb but it is not installed. Fix: `pip install wandb` "
                             "or remove it from report_to.")
    mp = mixed_precision(P)
    return TrainingArguments(
        output_dir=str(P.run_dir / "checkpoints"),
        per_device_train_batch_size=t.micro_batch_pairs,
        gradient_accumulation_steps=t.batch_size // per_step,
        learning_rate=t.learning_rate, num_train_epochs=t.epochs, max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_steps or t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, bf16=mp == "bf16", fp16=mp == "fp16",
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, report_to=[r for r in t.report_to if r != "tensorboard"],
        run_name=P.run.name, seed=P.run.seed, data_seed=P.run.seed, remove_unused_columns=False,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )


def _tensorboard_callbacks(P: Params) -> list[TrainerCallback]:
    if "tensorboard" not in P.train.report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(SummaryWriter(log_dir=str(P.run_dir / "tensorboard")))]


def prepare_model(P: Params, model=None, tokenizer=None):
    """Base model (loaded from ``P.model`` unless given) with a trainable LoRA adapter (new or continued).

    Seeds every generator with ``run.seed`` first, so the same parameters give a bitwise-identical new adapter
    on the same machine.
    """
    set_seed(P.run.seed)
    if model is None:
        model, tokenizer = load_model(P.model)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with a preloaded model")
    return attach_lora(model, P.model), tokenizer


def train_on(P: Params, dataset, model=None, tokenizer=None, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train on ``dataset`` (data-contract columns) and save the adapter; resumes from the last checkpoint."""
    model, tokenizer = prepare_model(P, model, tokenizer)
    t = P.train
    args = training_arguments(P)
    if t.batching == "reference":
        check_mutual_pairs(dataset)
    encoded = encode_entries(dataset, tokenizer, t.cutoff_len, t.append_eos, t.truncation)
    trainer = CoinTrainer(
        model=model, args=args, train_dataset=encoded, processing_class=tokenizer,
        data_collator=PairCollator(tokenizer, negatives=uses_row_negatives(t)),
        callbacks=_tensorboard_callbacks(P) + list(callbacks or []), coin=t,
    )
    last = last_complete_checkpoint(Path(args.output_dir), move_aside=trainer.is_world_process_zero())
    if last:
        check_resumable(P)
        log.info("resuming from %s", last)
    P.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(P.run_dir / "params.yaml", P.to_yaml())
    if last and _finished(P, Path(last)):
        # The Trainer would run one more step when resumed at the end: restore the final checkpoint instead.
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers.trainer_callback import TrainerState

        set_peft_model_state_dict(trainer.model, load_file(str(Path(last) / "adapter_model.safetensors")))
        trainer.state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
        log.info("run %s already finished at %s; re-saving its adapter", P.run.name, last)
    else:
        trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        write_log(trainer.state.log_history, P.run_dir / "train_log.csv")
        return save_adapter(trainer.model, P.run_dir / "adapter", P)
    return P.run_dir / "adapter"


#: Settings that may change between a run and its resumption (they do not change what is trained). ``max_steps``
#: and ``epochs`` are not among them: they set the learning-rate schedule of every step already taken.
RESUME_FREE = {"logging_steps", "save_steps", "save_total_limit", "report_to"}
#: Files every checkpoint holds; the Trainer writes ``trainer_state.json`` last.
CHECKPOINT_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def _defect(checkpoint: Path) -> tuple[str, str] | None:
    """Why ``checkpoint`` cannot be resumed from: ``("incomplete", why)`` when its save was cut short (a file missing,
    no readable trainer state), ``("damaged", why)`` when a file of it does not read back; None when it is intact."""
    import json

    missing = [f for f in CHECKPOINT_FILES if not (checkpoint / f).is_file()]
    if missing:
        return "incomplete", f"{missing[0]} missing"
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return "incomplete", f"trainer_state.json unreadable ({type(exc).__name__})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "incomplete", "trainer_state.json has no global_step"
    for f in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        problem = _unreadable(f)
        if problem:
            return "damaged", f"{f.name}: {problem}"
    return None


def _unreadable(path: Path) -> str | None:
    """What is wrong with a checkpoint file (safetensors, torch zip archive or JSON); None when it reads back whole."""
    import json
    import zipfile

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save writes zip archives with CRCs
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad:
                return f"member {bad} fails its CRC check"
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 (any damage: truncated, overwritten, foreign file)
        return f"{type(exc).__name__}: {exc}"
    return None


def last_complete_checkpoint(folder: Path, move_aside: bool = True) -> str | None:
    """The newest intact ``checkpoint-N`` in ``folder`` (None if none). Newer ones that are incomplete (a run killed
    while saving) or damaged (a file cut short or overwritten later) are renamed to ``incomplete-checkpoint-N`` or
    ``damaged-checkpoint-N`` (outside the Trainer's ``checkpoint-*`` rotation), with a warning naming the problem."""
    if not folder.is_dir():
        return None
    found = sorted((int(p.name[len("checkpoint-"):]), p) for p in folder.glob("checkpoint-*")
                   if p.is_dir() and p.name[len("checkpoint-"):].isdigit())
    for _, path in reversed(found):
        defect = _defect(path)
        if defect is None:
            return str(path)
        if move_aside:
            kind, why = defect
            aside = path.with_name(f"{kind}-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            cause = "the run stopped while saving it" if kind == "incomplete" else "a file was damaged after saving"
            log.warning("checkpoint %s is %s (%s; %s); moved it to %s and resume from the newest intact checkpoint",
                        path, kind, why, cause, aside.name)
    return None


def check_resumable(P: Params) -> None:
    """Refuse to resume checkpoints written with other model, data or training settings."""

    saved_path = P.run_dir / "params.yaml"
    if not saved_path.is_file():
        return
    saved = load_params(saved_path)
    new, old = P.model_dump(by_alias=True), saved.model_dump(by_alias=True)  # YAML key names (train.lambda)
    diffs = [f"{s}.{k}" for s in ("model", "data", "train") for k, v in new[s].items()
             if old[s][k] != v and not (s == "train" and k in RESUME_FREE)]
    if saved.run.seed != P.run.seed:
        diffs.append("run.seed")
    if diffs:
        why = (" (they set the learning-rate schedule of the steps already taken)"
               if {"train.max_steps", "train.epochs"} & set(diffs) else "")
        raise ValueError(
            f"{P.run_dir} holds checkpoints trained with different {', '.join(diffs)}{why}. Fix: use a new "
            f"run.name, or delete {P.run_dir / 'checkpoints'} to start over."
        )


def _finished(P: Params, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is the end of the run (``train.max_steps``, else the planned steps it recorded)."""
    import json

    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    target = P.train.max_steps if P.train.max_steps > 0 else state.get("max_steps", 0)
    return state.get("global_step", 0) >= target > 0


def train(P: Params, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train the run ``P`` on the contrastive dataset of ``coinlib.data.pairs``; returns the adapter folder."""
    return train_on(P, load_or_build(P), callbacks=callbacks)


def save_adapter(model, folder: Path, P: Params) -> Path:
    """Save the LoRA adapter (safetensors) and the resolved parameters, replacing ``folder`` atomically."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "coin_params.yaml").write_text(P.to_yaml(), encoding="utf-8")

    return atomic_folder(folder, fill)


def write_log(history: list[dict[str, Any]], path: Path) -> pd.DataFrame:
    """The training log rows (those with a loss) as a CSV with :data:`LOG_COLUMNS` first."""
    rows = [h for h in history if "loss" in h]
    df = pd.DataFrame(rows).rename(columns={})
    for col in LOG_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    df = df[LOG_COLUMNS + [c for c in df.columns if c not in LOG_COLUMNS]]
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return df


def main(argv: list[str] | None = None) -> int:
    """Command line: build or load the data, train, print the adapter folder."""
    import argparse


    ap = argparse.ArgumentParser(prog="python -m coinlib.train",
                                 description="Train COIN (or CIT) as a parameter file says.")
    ap.add_argument("params_file")
    add_set_argument(ap)
    args = ap.parse_args(argv)
    print(train(load_params_or_exit(args.params_file, args.sets)))
    return 0
