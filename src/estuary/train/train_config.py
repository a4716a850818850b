"""`TrainConfig`: a server LLM fine-tuning job (Ray Train workers, DeepSpeed, LoRA, objective, checkpoints).

Embeddable as the `train:` section of a job file; every field has help text. Everything that can be
checked without the cluster is checked here (one-line `ConfigError` through `TrainConfig.load`); the
cluster-dependent checks (resources, data) run in `estuary.train.preflight` before any worker starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from estuary.errors import ConfigError
from estuary.lm.lora import LoraConfig
from estuary.lm.precision import BF16_MATMUL_HELP
from estuary.resources import Resources, rename_old_keys
from estuary.train.objective_config import ObjectiveConfig
from estuary.train.zero_config import ZeroConfig


class TrainResources(Resources):
    """Ray resources of each Ray Train worker (`train.resources`)."""

    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs each worker reserves; also its torch threads "
                            "(at least 1).")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per worker: 0 = CPU workers (DeepSpeed CPU accelerator, gloo); 1 = one GPU "
        "each (NCCL). A fraction lets workers share a GPU (gloo only: NCCL needs one GPU per rank)."
    )


_OLD_KEYS = {"cpus_per_worker": "num_cpus", "gpus_per_worker": "num_gpus", "resources_per_worker": "custom"}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        "qwen2.5-0.5b", description="Server LLM to adapt: alias, local HF folder or hub id (the one being served)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Training precision (DeepSpeed bf16/fp16 modes; float16 needs GPU workers)."
    )
    bf16_matmul: Literal["auto", "torch"] = Field("auto", description=BF16_MATMUL_HELP)
    # -- scaling (Ray Train ScalingConfig) -------------------------------------------------------------
    workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel DeepSpeed ranks).")
    resources: TrainResources = Field(
        default_factory=TrainResources, description="Ray resources of each worker: num_cpus (default 1, also its "
        "torch threads), num_gpus (0 = CPU workers, 1 = a GPU each), custom (e.g. {estuary_server: 1})."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How the workers' bundles are placed on nodes (Ray placement group strategy)."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend: auto = nccl on GPU workers, gloo on CPU workers."
    )
    # -- optimisation ------------------------------------------------------------------------------------
    steps: int = Field(20, ge=1, description="Optimizer steps of the job (each worker runs the same number).")
    micro_batch_size: int = Field(4, ge=1, description="Examples per worker per forward/backward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the LoRA parameters.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm (DeepSpeed gradient_clipping).")
    max_length: int = Field(256, ge=8, description="Tokens per example (longer ones are cut on the right).")
    seed: int = Field(0, description="Seed of the LoRA initialisation, dropout and the knowledge shuffle.")
    shuffle: bool = Field(
        True, description="Shuffle the knowledge once before it is split over the workers (the round may hand "
        "it over grouped by client or kind)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    init_adapter: str | None = Field(
        None, description="PEFT adapter folder the job starts from, e.g. the last published version's path (its "
        "rank and targets must equal `lora`); None: a fresh LoRA adapter, seeded by `seed`."
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    zero: ZeroConfig = Field(default_factory=ZeroConfig)
    cpu_shm_comm: bool = Field(
        False, description="CPU workers: build DeepSpeed's shared-memory comm op (one-time g++ build of about "
        "85 s) instead of plain gloo collectives."
    )
    # -- checkpoints and failures ------------------------------------------------------------------------
    checkpoint_every: int = Field(
        10, ge=1, description="Steps between checkpoints (adapter + DeepSpeed state); the last step always saves."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept per job (older ones are deleted).")
    max_failures: int = Field(
        1, ge=-1, description="Worker failures the job recovers from (restart from the last checkpoint); -1 = any."
    )
    scheduling_retries: int = Field(
        1, ge=0, description="Times Ray Train retries starting the workers when they cannot be placed "
        "(each try waits about a minute) before the job fails."
    )
    resource_wait_s: float = Field(
        60.0, ge=0, description="Seconds to wait for the workers' resources to be free (other actors may hold "
        "them) before failing with one line."
    )
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps jobs and checkpoints (default <estuary cache>/train; shared "
        "storage on multi-node clusters)."
    )
    fault_drill_step: int | None = Field(
        None, ge=1, description="Fault drill: the last worker raises once, at this step of the job's first "
        "attempt, so the FailureConfig recovery path can be watched; leave unset."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_resource_keys(cls, data: Any) -> Any:
        """cpus_per_worker / gpus_per_worker / resources_per_worker: the old keys of `resources`."""
        return rename_old_keys(data, "train", _OLD_KEYS)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        gpus = self.resources.num_gpus
        if not self.on_gpu:
            if self.dtype == "float16":
                raise ValueError("dtype float16 needs GPU workers (resources.num_gpus > 0); use bfloat16 or float32")
            if self.zero.offloads:
                raise ValueError("zero offload moves state out of GPU memory; CPU workers (resources.num_gpus=0) "
                                 "keep it in CPU memory already: set zero.offload_optimizer/offload_param to none")
            if self.backend == "nccl":
                raise ValueError("backend nccl needs GPU workers (resources.num_gpus > 0); use gloo or auto")
        if 0 < gpus < 1 and self.workers > 1 and self.dist_backend == "nccl":
            raise ValueError(f"resources.num_gpus={gpus} puts several ranks on one GPU, which NCCL refuses; use "
                             "whole GPUs per worker or backend gloo")
        if self.fault_drill_step is not None and self.fault_drill_step > self.steps:
            raise ValueError(f"fault_drill_step={self.fault_drill_step} is after the last step ({self.steps})")
        from estuary.train.zero import deepspeed_config

        deepspeed_config(self)  # raw DeepSpeed keys agree with the job
        return self

    # -- derived values ----------------------------------------------------------------------------------
    @property
    def on_gpu(self) -> bool:
        return self.resources.on_gpu

    @property
    def dist_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if self.on_gpu else "gloo"

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.workers

    @classmethod
    def load(cls, data: dict[str, Any] | TrainConfig, source: str = "train") -> TrainConfig:
        """Validate a dict (a job's `train:` section); any problem is one ConfigError line naming the field."""
        if isinstance(data, TrainConfig):
            return data
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            from estuary.config.validation import format_validation_error

            first = err.errors()[0]
            if not first["loc"]:  # a whole-job rule (this model's own validator): no field to name
                raise ConfigError(f"{source}: {first['msg'].removeprefix('Value error, ')}") from None
            raise ConfigError(format_validation_error(err, source, cls)) from None
