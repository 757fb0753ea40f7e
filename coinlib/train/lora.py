"""LoRA (and QLoRA) adapters for training, via peft."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coinlib.core.params import ModelParams


def attach_lora(model, params: "ModelParams"):
    """Wrap ``model`` with a fresh LoRA adapter, or prepare the one it already has for training.

    Either way a 4-bit model is prepared for k-bit training (norms in float32, input gradients, gradient
    checkpointing when asked) and a full-precision one gets gradient checkpointing when asked.
    """
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model

    continued = isinstance(model, PeftModel)
    if params.load_in_4bit:
        adapter = [p for p in model.parameters() if p.requires_grad]
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.gradient_checkpointing,
                                                     gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in adapter:  # preparing freezes every parameter, a continued adapter's included
            p.requires_grad_(True)
    elif params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if continued:
        return model
    cfg = LoraConfig(
        r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)
