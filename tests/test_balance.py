"""train.balance (beyond the paper): the contrastive gradient scaled to at most the generation gradient's norm,
per optimizer step. Tiny random Llama, reference batching, 2 micro-batches of 2 entries per step."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from entries_helper import make_entries
from transformers import TrainerCallback

from coinlib.core.params import Params, ParamsError, validate
from coinlib.core.pooling import last_token_pool
from coinlib.train import trainer as train_mod
from coinlib.train.batching import PairCollator, encode_entries
from coinlib.train.loss import contrastive_weight, symmetric_info_nce

MODEL = {"name": "smollm2-135m-instruct", "lora": {"dropout": 0.0}}  # no dropout: a hand replay sees the same net


def make_params(tmp_path, name="b", model=None, **train):
    values = {"run": {"name": name, "output_root": str(tmp_path)}, "model": model or MODEL,
              "train": {"max_steps": 1, "batch_size": 4, "micro_batch_pairs": 2, "save_steps": 10,
                        "logging_steps": 1, "report_to": [], "cutoff_len": 64,
                        "max_grad_norm": 1e9,  # clipping multiplies by exactly 1: the captured gradient is the sum
                        **train}}
    return validate(values)


def _tiny(tok):
    from coinlib.core.models import tiny_llama

    return tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, seed=0)


class _Grads(TrainerCallback):
    """The gradient the optimizer is about to apply (after clipping), per trainable weight."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def applied(tmp_path, tok, name, **train):
    """Train one step; the applied gradient and the training log."""
    P = make_params(tmp_path, name, **train)
    cb = _Grads()
    train_mod.train_on(P, make_entries(4), _tiny(tok), tok, callbacks=[cb])
    assert cb.grads
    return cb.grads, pd.read_csv(P.run_dir / "train_log.csv")


def hand_terms(tmp_path, tok, **train):
    """The same step replayed by hand: per micro-batch L_ent (full-logit CE) and w * L_ctr, with their gradients
    (autograd, divided by the 2 accumulation steps) summed over the step. Returns (names, g_ent, g_ctr, per-mb)."""
    P = make_params(tmp_path, "hand", **train)
    model, tok = train_mod.prepare_model(P, _tiny(tok), tok)
    model.train()
    enc = encode_entries(make_entries(4), tok, 64)
    collate = PairCollator(tok, negatives=False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    per_mb = []
    for rows in ([0, 1], [2, 3]):  # reference batching: data order, micro-batches of one mutual pair
        b = collate([enc[i] for i in rows])
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        labels = b["labels"]
        ce = sum(F.cross_entropy(out.logits[s, :-1].float().reshape(-1, out.logits.shape[-1]),
                                 labels[s, 1:].reshape(-1), ignore_index=-100) for s in (slice(0, 2), slice(2, 4)))
        h = last_token_pool(out.hidden_states[-1], b["attention_mask"]).float()
        ctr = symmetric_info_nce(h[:2], h[2:4], P.train.temperature, in_batch=True)
        term = contrastive_weight(ce, ctr, P.train.lambda_) * ctr
        g_ent = torch.autograd.grad(ce / 2, params, retain_graph=True)
        g_ctr = torch.autograd.grad(term / 2, params)
        per_mb.append((g_ent, g_ctr))
    g_ent = [a + b for a, b in zip(per_mb[0][0], per_mb[1][0])]
    g_ctr = [a + b for a, b in zip(per_mb[0][1], per_mb[1][1])]
    return [n for n, _ in named], g_ent, g_ctr, per_mb


def norm(gs):
    return torch.sqrt(sum((g.double() ** 2).sum() for g in gs))


def _close(a: dict, names, b, atol=1e-6):
    assert list(a) == names
    for n, x in zip(names, b):
        assert torch.allclose(a[n], x, rtol=1e-4, atol=atol), (n, (a[n] - x).abs().max().item())


# ---------------------------------------------------------------------------------------------------- (a) none
def test_balance_none_is_the_unchanged_single_backward(tmp_path, smol_tokenizer, monkeypatch):
    """Default: the Trainer's own step, one backward of L = L_ent + w L_ctr per micro-batch; bit-identical to
    replaying that by hand; no balance columns."""
    assert Params.defaults()["train"]["balance"] == "none"
    monkeypatch.setattr(train_mod.CoinTrainer, "_balanced_step",
                        lambda *a, **k: pytest.fail("balance none must not take the balanced path"))
    got, log = applied(tmp_path, smol_tokenizer, "none")
    assert not set(train_mod.BALANCE_COLUMNS) & set(log.columns)
    # by hand: the same trainer's loss, (L / GA).backward() per micro-batch, accumulated in .grad
    P = make_params(tmp_path, "none-hand")
    model, tok = train_mod.prepare_model(P, _tiny(smol_tokenizer), smol_tokenizer)
    model.train()
    enc = encode_entries(make_entries(4), tok, 64)
    collate = PairCollator(tok, negatives=False)
    trainer = train_mod.CoinTrainer(model=model, args=train_mod.training_arguments(P), train_dataset=enc,
                                    data_collator=collate, coin=P.train)
    for rows in ([0, 1], [2, 3]):
        (trainer.compute_loss(model, collate([enc[i] for i in rows])) / 2).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert list(got) == list(want)
    assert all(torch.equal(got[n], want[n]) for n in want)


# ------------------------------------------------------------------------------------------------ (b) grad_norm
def test_grad_norm_applies_gen_plus_scaled_contrastive_gradient_per_step(tmp_path, smol_tokenizer):
    # tau 0.2: on the random tiny model L_ctr is then far from 0 (at the default 0.05 the two rows are already
    # told apart) and w * L_ctr's gradient is ~70x the generation gradient's, so the scaling is exercised
    got, log = applied(tmp_path, smol_tokenizer, "bal", balance="grad_norm", temperature=0.2)
    names, g_ent, g_ctr, per_mb = hand_terms(tmp_path, smol_tokenizer, temperature=0.2)
    n_ent, n_ctr = norm(g_ent), norm(g_ctr)
    scale = min(1.0, (n_ent / n_ctr).item())
    assert scale < 0.1
    _close(got, names, [e + scale * c for e, c in zip(g_ent, g_ctr)])
    # not the unbalanced sum, and not a per-micro-batch balance (each micro-batch scaled to its own g_ent)
    unbalanced = [e + c for e, c in zip(g_ent, g_ctr)]
    s_mb = [min(1.0, (norm(ge) / norm(gc)).item()) for ge, gc in per_mb]
    per_micro = [sum(ge[i] + s * gc[i] for (ge, gc), s in zip(per_mb, s_mb)) for i in range(len(names))]
    for other in (unbalanced, per_micro):
        assert any(not torch.allclose(got[n], x, rtol=1e-3, atol=1e-5) for n, x in zip(names, other))
    row = log.iloc[0]
    assert row["balance_scale"] == pytest.approx(scale, rel=1e-4) and row["balance_scale"] <= 1
    assert row["grad_norm_gen"] == pytest.approx(n_ent.item(), rel=1e-4)
    assert row["grad_norm_ctr"] == pytest.approx(n_ctr.item(), rel=1e-4)
    # the applied gradient's norm (the Trainer's grad_norm, before clipping) is at most twice |g_ent|
    assert row["grad_norm"] == pytest.approx(norm(got.values()).item(), rel=1e-4)
    assert row["grad_norm"] <= 2 * row["grad_norm_gen"] * (1 + 1e-5)


# ------------------------------------------------------------------------------------- (c) no scaling needed
def test_small_lambda_needs_no_scaling_and_matches_balance_none(tmp_path, smol_tokenizer):
    none, _ = applied(tmp_path, smol_tokenizer, "none-small", **{"lambda": 1e-3})
    bal, log = applied(tmp_path, smol_tokenizer, "bal-small", balance="grad_norm", **{"lambda": 1e-3})
    assert log["balance_scale"].iloc[0] == 1.0
    assert log["grad_norm_ctr"].iloc[0] < log["grad_norm_gen"].iloc[0]
    assert 0 < log["grad_norm_ctr"].iloc[0]  # the term is there, only small
    assert list(bal) == list(none)
    for n in none:  # the same gradient, summed in another order
        assert torch.allclose(bal[n], none[n], rtol=1e-5, atol=1e-7), n


# -------------------------------------------------------------------------------------------- (d) bad values
def test_bad_balance_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.balance.*'none'.*'grad_norm'"):
        make_params(tmp_path, balance="gradnorm")
    with pytest.raises(ValueError, match="train.balance=grad_norm runs on one process only"):
        train_mod.training_arguments(make_params(tmp_path, balance="grad_norm"), world_size=2)
    train_mod.training_arguments(make_params(tmp_path, balance="none"), world_size=2)  # the default is fine
    train_mod.training_arguments(make_params(tmp_path, balance="grad_norm", contrastive=False), world_size=2)


# ------------------------------------------------------------------- gradient checkpointing, bf16, CIT, resume
def test_grad_norm_with_gradient_checkpointing_gives_the_same_gradient(tmp_path, smol_tokenizer):
    plain, _ = applied(tmp_path, smol_tokenizer, "plain", balance="grad_norm")
    P = make_params(tmp_path, "ckpt", model={**MODEL, "gradient_checkpointing": True}, balance="grad_norm")
    cb = _Grads()
    model = _tiny(smol_tokenizer)
    train_mod.train_on(P, make_entries(4), model, smol_tokenizer, callbacks=[cb])
    assert model.model.gradient_checkpointing
    for n in plain:
        assert torch.allclose(cb.grads[n], plain[n], rtol=1e-5, atol=1e-7), n


def test_grad_norm_trains_under_bf16_autocast_and_logs_its_columns(tmp_path, smol_tokenizer):
    P = make_params(tmp_path, "bf16", model={**MODEL, "gradient_checkpointing": True}, balance="grad_norm",
                    mixed_precision="bf16", max_steps=2)
    seen: list[torch.dtype] = []
    model = _tiny(smol_tokenizer)
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    out = train_mod.train_on(P, make_entries(8), model, smol_tokenizer)
    assert seen and set(seen) == {torch.bfloat16}
    log = pd.read_csv(P.run_dir / "train_log.csv")
    assert log["step"].tolist() == [1, 2]
    cols = ["loss", "loss_ent", "loss_ctr", "weight", *train_mod.BALANCE_COLUMNS]
    assert log[cols].map(math.isfinite).all().all()
    assert ((log["balance_scale"] > 0) & (log["balance_scale"] <= 1)).all()
    assert list(log.columns[:len(train_mod.LOG_COLUMNS)]) == train_mod.LOG_COLUMNS
    from safetensors.torch import load_file

    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)


def test_grad_norm_without_contrastive_term_is_cit(tmp_path, smol_tokenizer):
    cit, _ = applied(tmp_path, smol_tokenizer, "cit", contrastive=False)
    bal, log = applied(tmp_path, smol_tokenizer, "cit-bal", contrastive=False, balance="grad_norm")
    assert all(torch.equal(bal[n], cit[n]) for n in cit)
    assert not set(train_mod.BALANCE_COLUMNS) & set(log.columns)
