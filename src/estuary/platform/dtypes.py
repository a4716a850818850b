"""The run's client dtype, decided once before any worker starts: `models.dtype: auto` resolved for the clients'
device and recorded in the run's config.yaml (so every worker, and a resume, uses the same one), and one line when
a job asks for bfloat16 on a CPU that does not run it natively (`estuary.lm.precision`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from estuary.client.groups import client_resources
from estuary.lm.precision import AUTO, bf16_note, resolve_dtype

if TYPE_CHECKING:
    from estuary.config import ExperimentConfig


def clients_on_gpu(cfg: ExperimentConfig) -> bool:
    """Whether the client workers ask for GPUs (clients.resources or any group's)."""
    return any(r.num_gpus > 0 for r in client_resources(cfg))


def _reason(chosen: str, gpu: str | None) -> str:
    """Why `auto` became `chosen`: the GPU (`gpu`, its label) or this CPU's bfloat16 support."""
    if gpu:
        return gpu
    if chosen == "bfloat16":
        return "this CPU runs bfloat16 natively"
    return "this CPU has no native bfloat16: no AVX512_BF16"


def resolve_run_dtype(cfg: ExperimentConfig) -> tuple[ExperimentConfig, str | None]:
    """`cfg` with models.dtype auto replaced by what it resolves to on the clients' device (GPU workers: bfloat16;
    CPU workers: decided on this machine, the local cluster's node or the driver of a CPU cluster), and the line
    saying so; `cfg` itself and None when the job names a dtype."""
    if cfg.models.dtype != AUTO:
        return cfg, None
    on_gpu = clients_on_gpu(cfg)
    chosen = resolve_dtype(AUTO, on_gpu=on_gpu)
    why = _reason(chosen, "GPU clients" if on_gpu else None)
    models = cfg.models.model_copy(update={"dtype": chosen})
    return cfg.model_copy(update={"models": models}), f"models.dtype auto → {chosen} ({why})"


def resolve_server_dtype(cfg: ExperimentConfig) -> tuple[ExperimentConfig, str | None]:
    """`cfg` with server.dtype auto replaced by what the deployment would resolve it to (`ServerConfig.
    resolved_dtype`: a GPU server bfloat16, a CPU one by this machine's CPU), and the line saying so; `cfg` itself
    and None when the job names a dtype or no strategy of the run serves the LLM."""
    from estuary.registry import server_uses

    server = cfg.server_config()
    if server.dtype != AUTO or not server_uses(cfg.strategies()):
        return cfg, None
    chosen = server.resolved_dtype()
    why = _reason(chosen, "GPU server" if server.on_gpu else None)
    return (cfg.model_copy(update={"server": server.model_copy(update={"dtype": chosen})}),
            f"server.dtype auto → {chosen} ({why})")


def dtype_lines(cfg: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """`resolve_run_dtype` and `resolve_server_dtype`, plus the note for bfloat16 clients on a CPU without it: what
    validate and run print."""
    cfg, chosen = resolve_run_dtype(cfg)
    note = None if chosen else bf16_note("models.dtype", cfg.models.dtype, on_gpu=clients_on_gpu(cfg),
                                          matmul=cfg.models.bf16_matmul)
    cfg, served = resolve_server_dtype(cfg)
    return cfg, [line for line in (chosen, note, served) if line]
