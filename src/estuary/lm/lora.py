"""`LoraConfig`: the one description of a LoRA adapter, for clients (`training.lora`), DP generators and
teachers, and the server trainer (`train.lora`); `peft_config` turns it into PEFT's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    r: int = Field(8, ge=1, description="LoRA rank (a served adapter's must not exceed server.max_lora_rank).")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], min_length=1,
        description="Module names that get adapters (Llama/Qwen attention projections by default).",
    )

    def peft_config(self) -> Any:
        """PEFT's `LoraConfig` for a causal LM (bias untouched)."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType

        return PeftLoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                              target_modules=list(self.targets), task_type=TaskType.CAUSAL_LM, bias="none")
