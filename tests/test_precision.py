"""Precision choice: ``model.dtype: auto`` follows the hardware's native bfloat16 support."""

from __future__ import annotations

import pytest
import torch

from coinlib.core import precision


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_is_resolved_from_the_hardware_when_parameters_load(monkeypatch, fast):
    from coinlib.core.params import validate

    monkeypatch.setattr(precision, "bf16_is_fast", lambda device=None: fast)
    P = validate({"run": {"name": "x"}, "model": {"name": "smollm2-135m-instruct", "dtype": "auto"}})
    assert P.model.dtype == ("bfloat16" if fast else "float32")  # what keys, caches and params.yaml record
    assert "dtype: auto" not in P.to_yaml()
    assert validate({"run": {"name": "x"}, "model": {"dtype": "float32"}}).model.dtype == "float32"  # explicit wins


def test_bf16_is_fast_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not precision.bf16_is_fast("cpu") and precision.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.bf16_is_fast("cpu") and precision.resolve_dtype("auto", "cpu") == "bfloat16"
    assert precision.resolve_dtype("float16", "cpu") == "float16"
