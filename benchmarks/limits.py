"""The machine's matmul limits for a model's own shapes, in float32 and bfloat16, measured in this process.

A benchmark prints each mode's achieved FLOP rate as a share of the limit of the dtype it computes in: the rate of
one decoder layer's linear layers (the model's shapes) on as many rows as the mode's batches hold, with the same
threads. On a CPU with AMX-BF16 tiles the bfloat16 limit is several times the float32 one.
"""

from __future__ import annotations

import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def decoder_linears(model) -> list[torch.nn.Linear]:
    """The linear layers of the model's first decoder layer (the base layers under a LoRA wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer = base.model.layers[0]
    return [m for m in layer.modules() if type(m) is torch.nn.Linear and "lora" not in type(m).__module__
            and m.in_features > 64 and m.out_features > 64]


@torch.inference_mode()
def matmul_rate(model, rows: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """FLOP/s of one decoder layer's linear layers in ``dtype`` on ``rows`` rows (best of three timings)."""
    linears = decoder_linears(model)
    weights = [m.weight.detach().to(dtype) for m in linears]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=dtype) for w in weights}
    flop = sum(2 * rows * w.shape[0] * w.shape[1] for w in weights)
    for _ in range(3):
        for w in weights:
            torch.nn.functional.linear(xs[w.shape[1]], w)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)
        best = min(best, (time.perf_counter() - start) / repeats)
    return flop / best


def matmul_limits(model, rows: int) -> dict[str, float]:
    """``{"float32": FLOP/s, "bfloat16": FLOP/s}`` for the model's shapes on ``rows`` rows."""
    return {name: matmul_rate(model, rows, dtype) for name, dtype in DTYPES.items()}


def non_embedding_params(model) -> int:
    """Parameters every token goes through: all but the input embedding (a tied output layer shares it) and LoRA."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    skip = {id(emb)} | ({id(head.weight)} if head is not None else set())
    return sum(p.numel() for n, p in model.named_parameters() if id(p) not in skip and "lora_" not in n)
