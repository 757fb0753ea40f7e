"""Training on the tiny model: smoke, loss wiring, CIT, resume equality, NaN handling, adapters, 4-bit, gather."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from entries_helper import make_entries
from safetensors.torch import load_file
from transformers import TrainerCallback

from coinlib.core.models import tiny_llama
from coinlib.core.params import load_params, validate
from coinlib.train import trainer as train_mod
from coinlib.train.batching import PairCollator, encode_entries
from coinlib.train.loss import coin_loss
from coinlib.core.pooling import last_token_pool


def make_params(tmp_path, name="t", model=None, **train):
    values = {"run": {"name": name, "output_root": str(tmp_path)},
              "train": {"max_steps": 2, "batch_size": 2, "micro_batch_pairs": 2, "save_steps": 2,
                        "logging_steps": 1, "report_to": [], "cutoff_len": 64, **train}}
    if model:
        values["model"] = model
    return validate(values)


def fresh_model(tok):
    return tiny_llama(vocab_size=len(tok), pad_token_id=tok.pad_token_id, seed=0)


def adapter_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_smoke_trains_logs_and_saves_adapter(tmp_path, smol_tokenizer):
    P = make_params(tmp_path, report_to=["tensorboard"])
    out = train_mod.train_on(P, make_entries(8), fresh_model(smol_tokenizer), smol_tokenizer)
    assert out == P.run_dir / "adapter"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert load_params(P.run_dir / "params.yaml").train == P.train  # resolved params beside the adapter
    weights = adapter_weights(out)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(torch.isfinite(v).all() for v in weights.values())
    assert any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: nonzero means it trained
    log = pd.read_csv(P.run_dir / "train_log.csv")
    assert log["step"].tolist() == [1, 2]
    for col in ["loss", "loss_ent", "loss_ctr", "weight", "cos_pos", "cos_neg"]:
        assert log[col].map(math.isfinite).all(), col
    assert (log["weight"] <= 1000).all() and (log["weight"] > 0).all()
    assert any((P.run_dir / "tensorboard").iterdir())


def _reference_info_nce(anchors, positives, negatives, tau=0.05) -> np.ndarray:
    """Per-anchor InfoNCE written out in numpy: anchor i's candidates are all positives then all negatives,
    the right one is positive i."""
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    logits = unit(anchors) @ unit(np.concatenate([positives, negatives])).T / tau
    top = logits.max(1)
    logz = np.log(np.exp(logits - top[:, None]).sum(1)) + top
    return logz - logits[np.arange(len(logits)), np.arange(len(logits))]


def _reference_ctr(o, p, n, rows=slice(None)) -> float:
    """Symmetric in-batch InfoNCE (original->positive and back) averaged over the anchors ``rows``."""
    return float(0.5 * (_reference_info_nce(o, p, n)[rows].mean() + _reference_info_nce(p, o, n)[rows].mean()))


def _manual_loss(model, batch, k):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    labels = batch["labels"]
    ce = sum(F.cross_entropy(out.logits[s, :-1].reshape(-1, out.logits.shape[-1]), labels[s, 1:].reshape(-1),
                             ignore_index=-100) for s in (slice(0, k), slice(k, 2 * k)))
    h = last_token_pool(out.hidden_states[-1], batch["attention_mask"])
    return ce, h


@pytest.mark.parametrize("batching,gather", [("reference", False), ("paired", False), ("in_batch", False),
                                             ("in_batch", True)])
def test_compute_loss_matches_hand_wiring(tmp_path, smol_tokenizer, batching, gather):
    P = make_params(tmp_path, batching=batching, gather_across_processes=gather)
    model, tok = train_mod.prepare_model(P, fresh_model(smol_tokenizer), smol_tokenizer)
    model.eval()  # no dropout: both computations see the same network
    enc = encode_entries(make_entries(3), tok, 64)
    k = 2 if batching == "reference" else 3
    collator = PairCollator(tok, negatives=batching != "reference")
    batch = collator([enc[i] for i in range(k)])
    trainer = train_mod.CoinTrainer(model=model, args=train_mod.training_arguments(P), train_dataset=enc,
                                    data_collator=collator, coin=P.train)
    with torch.no_grad():
        got = trainer.compute_loss(model, batch)
        ce, h = _manual_loss(model, batch, k)
    o, p, n = h[:k], h[k:2 * k], h[2 * k:]
    if batching == "reference":  # the micro-batch's own rows, no negative row
        assert batch["input_ids"].shape[0] == 4
        empty = np.zeros((0, o.shape[1]))
        ctr = torch.tensor(_reference_ctr(o.double().numpy(), p.double().numpy(), empty))
    elif batching == "paired":  # own positive vs own negative only
        ctr = 0.5 * sum(-F.log_softmax(torch.stack([F.cosine_similarity(a[i], b[i], 0), F.cosine_similarity(a[i], n[i], 0)])
                                       / 0.05, 0)[0] for a, b in ((o, p), (p, o)) for i in range(3)) / 3
    else:  # in-batch pool (all positives) plus all hard negatives; a single process gathers nothing
        ctr = torch.tensor(_reference_ctr(o.double().numpy(), p.double().numpy(), n.double().numpy()))
    expected, _ = coin_loss(ce, ctr, 1000.0)
    # float32 model vs float64 reference: near-zero InfoNCE values (similar rows) need an absolute tolerance too
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert trainer._sums["loss_ctr"] == pytest.approx(ctr.item(), rel=1e-4, abs=1e-6)


def test_cit_baseline_has_no_contrastive_term(tmp_path, smol_tokenizer):
    P = make_params(tmp_path, contrastive=False, max_steps=1)
    train_mod.train_on(P, make_entries(4), fresh_model(smol_tokenizer), smol_tokenizer)
    log = pd.read_csv(P.run_dir / "train_log.csv")
    assert log["loss"].iloc[0] == pytest.approx(log["loss_ent"].iloc[0], rel=1e-5)
    assert log["loss_ctr"].isna().all()


class _Kill(TrainerCallback):
    class Killed(RuntimeError):
        pass

    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise self.Killed(f"killed at step {state.global_step}")


def test_killed_run_resumes_to_the_same_adapter(tmp_path, smol_tokenizer):
    data = make_entries(12)
    full = make_params(tmp_path, "full", max_steps=4)
    train_mod.train_on(full, data, fresh_model(smol_tokenizer), smol_tokenizer)
    part = make_params(tmp_path, "part", max_steps=4)
    with pytest.raises(_Kill.Killed):
        train_mod.train_on(part, data, fresh_model(smol_tokenizer), smol_tokenizer, callbacks=[_Kill(3)])
    assert not (part.run_dir / "adapter").exists()
    assert (part.run_dir / "checkpoints" / "checkpoint-2").is_dir()
    train_mod.train_on(part, data, fresh_model(smol_tokenizer), smol_tokenizer)  # rerun resumes at step 2
    a, b = adapter_weights(full.run_dir / "adapter"), adapter_weights(part.run_dir / "adapter")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    ckpt2 = adapter_weights(full.run_dir / "checkpoints" / "checkpoint-2")
    assert any(not torch.allclose(a[k], ckpt2[k]) for k in a)  # steps 3-4 changed the weights
    assert pd.read_csv(part.run_dir / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]
    # rerunning a finished run trains nothing more and keeps the adapter
    shutil.rmtree(part.run_dir / "adapter")
    train_mod.train_on(part, data, fresh_model(smol_tokenizer), smol_tokenizer)
    again = adapter_weights(part.run_dir / "adapter")
    assert all(torch.equal(again[k], b[k]) for k in b)
    assert pd.read_csv(part.run_dir / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path, smol_tokenizer, monkeypatch):
    P = make_params(tmp_path, max_steps=4)
    real_ce, calls = train_mod.supervised_ce, {"n": 0}

    def flaky_ce(head, hidden, labels):
        calls["n"] += 1
        value = real_ce(head, hidden, labels)
        return value * float("nan") if calls["n"] > 4 else value  # 2 CE calls per step: NaN from step 3

    monkeypatch.setattr(train_mod, "supervised_ce", flaky_ce)
    with pytest.raises(train_mod.NonFiniteLossError, match="step 2.*checkpoints.*intact"):
        train_mod.train_on(P, make_entries(12), fresh_model(smol_tokenizer), smol_tokenizer)
    ckpt = P.run_dir / "checkpoints" / "checkpoint-2"
    assert all(torch.isfinite(v).all() for v in adapter_weights(ckpt).values())
    assert not (P.run_dir / "checkpoints" / "checkpoint-4").exists()


def test_bad_settings_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of micro_batch_pairs"):
        train_mod.training_arguments(make_params(tmp_path, batch_size=3))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
            train_mod.training_arguments(make_params(tmp_path, mixed_precision="fp16"))




def test_warmup_ratio_is_a_share_of_the_optimizer_steps(tmp_path):
    """The paper recipe's 10% warm-up: 813 steps (52,002 entries / 64) warm up for ceil(81.3) = 82."""
    args = train_mod.training_arguments(make_params(tmp_path, warmup_ratio=0.1))
    assert args.get_warmup_steps(813) == 82 and args.get_warmup_steps(10) == 1
    assert train_mod.training_arguments(make_params(tmp_path, warmup_steps=5)).get_warmup_steps(782) == 5
    assert train_mod.training_arguments(make_params(tmp_path)).get_warmup_steps(782) == 0
    from coinlib.core.params import load_params
    from coinlib.core.sources import REPO_ROOT

    assert load_params(REPO_ROOT / "params" / "lambda1000.yaml").train.warmup_ratio == 0.1


def test_continues_an_existing_adapter(tmp_path, tiny_dir):
    first = make_params(tmp_path, "first", model={"name": str(tiny_dir)}, max_steps=1)
    adapter = train_mod.train_on(first, make_entries(4))  # loads the model from the folder
    second = make_params(tmp_path, "second", model={"name": str(tiny_dir), "adapter": str(adapter)})
    model, _ = train_mod.prepare_model(second)
    saved = adapter_weights(adapter)
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(state) == len(saved) and any(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)
    for key, value in saved.items():
        match = [v for k, v in state.items() if k.replace(".default", "") == key]
        assert match and torch.equal(match[0], value), key
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0  # continued adapter is trainable


class _Snapshots(TrainerCallback):
    """Copies of the trained model's LoRA and base weights when training begins and ends."""

    def __init__(self):
        self.model, self.begin, self.end = None, {}, {}

    def _copy(self, model):
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model, self.begin = model, self._copy(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end = self._copy(model)


def test_qlora_4bit_trains_on_cpu(tmp_path, tiny_dir):
    from bitsandbytes.nn import Linear4bit, Params4bit

    P = make_params(tmp_path, model={"name": str(tiny_dir), "load_in_4bit": True}, max_steps=1)
    snap = _Snapshots()
    out = train_mod.train_on(P, make_entries(4), callbacks=[snap])
    assert (out / "adapter_model.safetensors").is_file()
    assert math.isfinite(pd.read_csv(P.run_dir / "train_log.csv")["loss"].iloc[0])
    # the base decoder's Linear layers are bitsandbytes NF4 (packed uint8 weights), LoRA sits on top of them
    layers = snap.model.get_base_model().model.layers
    linears = [m for name, m in layers.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name]
    assert len(linears) == 7 * len(layers)  # q, k, v, o, gate, up, down per decoder layer
    assert all(isinstance(m, Linear4bit) and isinstance(m.weight, Params4bit) for m in linears)
    assert {m.weight.quant_type for m in linears} == {"nf4"} and {m.weight.dtype for m in linears} == {torch.uint8}
    lora = [k for k in snap.begin if "lora_" in k]
    base = [k for k in snap.begin if "lora_" not in k]
    assert lora and all(snap.model.get_parameter(k).requires_grad for k in lora)
    # one optimizer step: LoRA B (zero at start) moved; every base weight, 4-bit or not, is bit-for-bit unchanged
    assert all(not torch.equal(snap.begin[k], snap.end[k]) for k in lora if "lora_B" in k)
    assert all(torch.equal(snap.begin[k], snap.end[k]) for k in base)


def test_continued_4bit_adapter_is_prepared_for_kbit_training_and_stays_trainable(tmp_path, tiny_dir, monkeypatch):
    """QLoRA resumed from an adapter gets the same k-bit preparation as a fresh one, and its LoRA still learns."""
    import peft

    model = {"name": str(tiny_dir), "load_in_4bit": True, "gradient_checkpointing": True}
    adapter = train_mod.train_on(make_params(tmp_path, "first", model=model, max_steps=1), make_entries(4))
    prepared = []
    real = peft.prepare_model_for_kbit_training
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda m, **kw: prepared.append(m) or real(m, **kw))
    snap = _Snapshots()
    second = make_params(tmp_path, "second", model={**model, "adapter": str(adapter)}, max_steps=1)
    train_mod.train_on(second, make_entries(4), callbacks=[snap])
    assert len(prepared) == 1 and isinstance(prepared[0], peft.PeftModel)
    assert snap.model.is_gradient_checkpointing
    lora = [k for k in snap.begin if "lora_" in k]
    assert lora and all(snap.model.get_parameter(k).requires_grad for k in lora)
    assert all(not snap.model.get_parameter(k).requires_grad for k in snap.begin if "lora_" not in k)
    assert all(not torch.equal(snap.begin[k], snap.end[k]) for k in lora if "lora_B" in k)


def test_two_process_gather_keeps_positive_and_negative_order(tmp_path):
    """Each rank's anchors find their own positives in the gathered pool (gloo, 2 CPU processes)."""
    import gather_worker  # light module: the spawned processes import only torch and coinlib.train.loss
    import torch.multiprocessing as mp

    mp.spawn(gather_worker.run, args=(2, gather_worker.free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    torch.manual_seed(0)
    o_all, p_all, n_all = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    assert [x["offset"] for x in r] == [0, 2]
    for x in r:  # every rank sees all rows in rank order
        assert torch.equal(x["go"], o_all) and torch.equal(x["gp"], p_all) and torch.equal(x["gn"], n_all)
    # each rank's anchors see all 4 positives and all 4 negatives: the mean of the per-rank losses is the
    # in-batch loss over all 4 anchors, and each rank's loss is its own anchors' part of it
    full = _reference_ctr(o_all, p_all, n_all)
    assert ((r[0]["loss"] + r[1]["loss"]) / 2).item() == pytest.approx(full, rel=1e-5)
    for rank, x in enumerate(r):
        assert x["loss"].item() == pytest.approx(_reference_ctr(o_all, p_all, n_all, slice(2 * rank, 2 * rank + 2)), rel=1e-5)


SWEEP = [1, 10, 100, 1000, 10000, 100000000]


def test_training_params_files():
    from coinlib.core.params import PARAMS_DIR

    base = load_params(PARAMS_DIR / "paper-alpaca7b.yaml")
    assert (base.train.learning_rate, base.train.batch_size, base.train.cutoff_len) == (1e-4, 64, 256)
    assert (base.train.temperature, base.train.lambda_, base.model.adapter) == (0.05, 1000, "tloen/alpaca-lora-7b")
    assert (base.model.lora.r, base.model.lora.alpha, base.model.lora.dropout) == (16, 16, 0.05)
    dump = base.model_dump(exclude={"run", "train"})
    for lam in SWEEP:
        P = load_params(PARAMS_DIR / f"lambda{lam}.yaml")
        assert P.run.name == f"lambda{lam}" and P.train.lambda_ == lam
        assert P.model_dump(exclude={"run", "train"}) == dump
        assert P.train.model_copy(update={"lambda_": base.train.lambda_}) == base.train
    cit = load_params(PARAMS_DIR / "cit.yaml")
    assert not cit.train.contrastive and cit.train.model_copy(update={"contrastive": True}) == base.train
    mini, mini_cit = load_params(PARAMS_DIR / "cpu-mini.yaml"), load_params(PARAMS_DIR / "cpu-mini-cit.yaml")
    assert mini.model.name == "smollm2-135m-instruct" and mini.data == mini_cit.data and mini.data_dir == mini_cit.data_dir
    assert not mini_cit.train.contrastive and mini_cit.train.model_copy(update={"contrastive": True}) == mini.train


def test_resuming_with_other_settings_is_refused(tmp_path, smol_tokenizer):
    P = make_params(tmp_path, max_steps=2)
    train_mod.train_on(P, make_entries(4), fresh_model(smol_tokenizer), smol_tokenizer)
    changed = make_params(tmp_path, max_steps=2, learning_rate=5e-4)
    with pytest.raises(ValueError, match="different train.learning_rate.*new run.name"):
        train_mod.train_on(changed, make_entries(4), fresh_model(smol_tokenizer), smol_tokenizer)


def test_bf16_autocast_with_gradient_checkpointing(tmp_path, smol_tokenizer):
    P = make_params(tmp_path, model={"name": "smollm2-135m-instruct", "gradient_checkpointing": True},
                    mixed_precision="bf16", max_steps=1)
    model = fresh_model(smol_tokenizer)
    seen, shapes = {"q_proj": [], "lm_head": []}, {"q_proj": [], "lm_head": []}

    def record(name):
        def hook(module, args, output):
            seen[name].append(output.dtype)
            shapes[name].append(tuple(output.shape))
        return hook

    model.model.layers[0].self_attn.q_proj.register_forward_hook(record("q_proj"))  # the LoRA-wrapped base layer
    model.lm_head.register_forward_hook(record("lm_head"))
    out = train_mod.train_on(P, make_entries(4), model, smol_tokenizer)
    # autocast: float32 weights, bfloat16 matmul outputs inside the model during the training step
    assert set(seen["q_proj"]) == {torch.bfloat16} and set(seen["lm_head"]) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # one micro-batch, one forward: q_proj ran a second time when backward recomputed the checkpointed layer;
    # the output layer ran on each row's last position inside the model, then on the supervised positions only
    # of the originals and of the positives (a few rows each, not rows x sequence length)
    assert model.model.gradient_checkpointing and len(seen["q_proj"]) == 2 and len(seen["lm_head"]) == 3
    rows, width = shapes["q_proj"][0][:2]
    assert shapes["lm_head"][0][:2] == (rows, 1)
    assert all(len(s) == 2 and 0 < s[0] < rows * width // 4 for s in shapes["lm_head"][1:])
    log = pd.read_csv(P.run_dir / "train_log.csv")
    assert log[["loss", "loss_ent", "loss_ctr"]].map(math.isfinite).all().all()
    assert any(v.abs().sum() > 0 for k, v in adapter_weights(out).items() if "lora_B" in k)


def test_bfloat16_weights_train_a_float32_adapter_with_bf16_matmuls(tmp_path, smol_tokenizer):
    """model.dtype bfloat16: frozen base weights in bf16, LoRA weights in float32, matmuls autocast to bf16."""
    P = make_params(tmp_path, model={"name": "smollm2-135m-instruct", "dtype": "bfloat16"}, max_steps=1)
    assert train_mod.mixed_precision(P) == "bf16"  # train.mixed_precision auto follows model.dtype
    model = fresh_model(smol_tokenizer).to(torch.bfloat16)
    seen: list[torch.dtype] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    out = train_mod.train_on(P, make_entries(4), model, smol_tokenizer)
    assert seen and set(seen) == {torch.bfloat16}
    saved = adapter_weights(out)
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # the adapter learned something
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if "lora_" not in n)
    log = pd.read_csv(P.run_dir / "train_log.csv")
    assert log[["loss", "loss_ent", "loss_ctr"]].map(math.isfinite).all().all()
