"""`ZeroConfig`: the DeepSpeed side of a server training job (ZeRO stage, offload, raw DeepSpeed keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Offload = Literal["none", "cpu", "nvme"]


class ZeroConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="ZeRO stage: 0 plain data parallel, 1 shards optimizer state, 2 also gradients, 3 also the "
        "parameters (the frozen base weights too) across workers.",
    )
    offload_optimizer: Offload = Field(
        "none",
        description="ZeRO-Offload of the optimizer state to CPU memory or NVMe (stages 1-3). GPU workers only: "
        "on CPU workers the state already lives in CPU memory.",
    )
    offload_param: Offload = Field(
        "none",
        description="ZeRO-Infinity offload of the parameters to CPU memory or NVMe (stage 3 only; GPU workers only).",
    )
    nvme_path: str | None = Field(
        None, description="Local NVMe folder for 'nvme' offload (required with it, on every node)."
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other DeepSpeed JSON keys, merged over the generated config (e.g. {gradient_clipping: "
        "0.5, zero_optimization: {overlap_comm: true}}). A key the job already sets elsewhere (batch sizes, "
        "stage, offload, precision, learning rate) must agree with it.",
    )

    @model_validator(mode="after")
    def _check(self) -> ZeroConfig:
        if self.offload_param != "none" and self.stage != 3:
            raise ValueError(f"offload_param={self.offload_param} needs stage 3 (parameters are only partitioned, "
                             f"and so offloadable, in ZeRO-3); got stage {self.stage}")
        if self.offload_optimizer != "none" and self.stage == 0:
            raise ValueError(f"offload_optimizer={self.offload_optimizer} needs ZeRO stage 1, 2 or 3; got stage 0")
        uses_nvme = "nvme" in (self.offload_optimizer, self.offload_param)
        if uses_nvme and not self.nvme_path:
            raise ValueError("nvme offload needs nvme_path (a local NVMe folder on every node)")
        if self.nvme_path and not uses_nvme:
            raise ValueError("nvme_path is set but nothing is offloaded to nvme (offload_optimizer/offload_param)")
        return self

    @property
    def offloads(self) -> bool:
        return self.offload_optimizer != "none" or self.offload_param != "none"
