"""Shared fixtures. Tests never touch the network: the hub is forced offline and data comes from the mirror."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from coinlib.core.sources import resolve_mirror  # noqa: E402


@pytest.fixture(scope="session")
def mirror():
    """The local data mirror (skips when none is configured or beside the repository)."""
    root = resolve_mirror("auto")
    if root is None:
        pytest.skip("no local data mirror: set COIN_DATA_MIRROR")
    return root


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (offline copy; pads on the right)."""
    from coinlib.core.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama saved as a local model folder with the real tokenizer (read only: tests load from it)."""
    from coinlib.core.models import tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model(smol_tokenizer):
    """A tiny random Llama sharing the real tokenizer's vocabulary."""
    from coinlib.core.models import tiny_llama

    torch.manual_seed(0)
    return tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id)
