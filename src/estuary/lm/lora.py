"""`LoraConfig`: the one description of a LoRA adapter, for clients (`training.lora`), DP generators and
teachers, and the server trainer (`train.lora`); `peft_config(model)` turns it into PEFT's.

`targets: auto` (the default) takes the target modules from PEFT's per-architecture mapping
(`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: q_proj and v_proj for Llama, Qwen2 and Gemma-3), and for
an architecture PEFT does not list, every linear projection (a Linear, or GPT-2's transposed `Conv1D`) inside the
attention blocks, so that any Hugging Face causal LM works without its module names. Where the targets are
`Conv1D`s, the adapter is told their weight is stored input × output (PEFT's `fan_in_fan_out`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # a job's config imports this module: torch is loaded only where a model is
    import torch

AUTO: Literal["auto"] = "auto"


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, ge=1, description="LoRA rank (a served adapter's must not exceed server.max_lora_rank).")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    targets: list[str] | Literal["auto"] = Field(
        AUTO, description="Module names that get adapters, or auto: PEFT's mapping for the architecture (q_proj, "
        "v_proj for Llama/Qwen2/Gemma-3), else every linear projection inside the attention blocks.",
    )

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and not v:
            raise ValueError("give at least one module name, or auto")
        return v

    def target_modules(self, model: torch.nn.Module) -> list[str]:
        """The module names this adapter targets in `model` (resolving `auto`)."""
        return auto_targets(model)[0] if self.targets == AUTO else list(self.targets)

    def peft_config(self, model: torch.nn.Module) -> Any:
        """PEFT's `LoraConfig` for a causal LM `model` (bias untouched)."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType

        targets = self.target_modules(model)
        return PeftLoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                              fan_in_fan_out=targets_conv1d(model, targets), task_type=TaskType.CAUSAL_LM,
                              bias="none")


def targets_conv1d(model: torch.nn.Module, targets: list[str]) -> bool:
    """Whether the modules named `targets` in `model` are GPT-2-style `Conv1D`s (weight stored input × output)."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in targets)


def auto_targets(model: torch.nn.Module) -> tuple[list[str], str]:
    """(target module names, where they come from) for `targets: auto`; ValueError if the model has none."""
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING
    from transformers.pytorch_utils import Conv1D

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MAPPING:
        return list(MAPPING[model_type]), f"PEFT's mapping for {model_type}"
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear | Conv1D)
                    and any("attn" in part or "attention" in part for part in name.split(".")[:-1])})
    if not names:
        raise ValueError(f"training.lora.targets: auto found no linear projection inside the attention blocks of "
                         f"{type(model).__name__} ({model_type}); name the modules, e.g. targets: [q_proj, v_proj]")
    return names, f"the linear projections in {model_type or type(model).__name__}'s attention blocks"
