"""LoRA (and QLoRA) adapters for training, via peft."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coinlib.core.params import ModelParams


def attach_lora(model, params: "ModelParams"):
    """Wrap ``model`` with a fresh LoRA adapter (or return it as is when it already has one)."""
    from peft import (
        LoraConfig,
        PeftModel,
        get_peft_model,
        prepare_model_for_kbit_training,
    )

    if isinstance(model, PeftModel):
        return model
    if params.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.gradient_checkpointing)
    elif params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    cfg = LoraConfig(
        r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)
