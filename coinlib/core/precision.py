"""Which precision a machine computes fast: bfloat16 where the hardware has native bf16 matmul, else float32."""

from __future__ import annotations

import torch


def bf16_is_fast(device: str | torch.device | None = None) -> bool:
    """Whether bfloat16 matmuls run faster than float32 on ``device`` (default: CUDA when available, else CPU).

    A CUDA GPU with bfloat16 support, or a CPU with AMX-BF16 tiles or AVX512-BF16 instructions. Elsewhere (an AVX2
    CPU, say) bfloat16 matmuls are emulated and run several times slower than float32.
    """
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def resolve_dtype(dtype: str, device: str | torch.device | None = None) -> str:
    """``model.dtype`` as loaded: ``auto`` is ``bfloat16`` where :func:`bf16_is_fast`, else ``float32``."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_fast(device) else "float32"


def precision_record(dtype: str) -> dict[str, object]:
    """What decides the numbers and speed of a run's matmuls here: dtype, device and its bfloat16 support."""
    cuda = torch.cuda.is_available()
    return {"dtype": dtype, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_is_fast": bf16_is_fast(),
            "torch": torch.__version__}
