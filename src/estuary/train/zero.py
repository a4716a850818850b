"""DeepSpeed for the server training job: the JSON config built from the job, and engine set-up in a worker.

`deepspeed_config` turns a `TrainConfig` into DeepSpeed's JSON (batch sizes, ZeRO stage and offload,
precision, a torch AdamW) and merges the job's raw `zero.deepspeed` keys over it; a raw key that disagrees
with a setting the job makes elsewhere is an error, caught when the job is validated, before any worker.

On CPU workers DeepSpeed runs its CPU accelerator over the gloo process group Ray Train created (no
oneCCL). Two DeepSpeed CPU builds are avoided: the shared-memory comm op (a g++ build of about 85 s at the
first `initialize`; `cpu_shm_comm` turns it back on) and DeepSpeed's own Adam (about 2 more minutes):
the optimizer is torch's AdamW (`torch_adam`).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from estuary.train.train_config import TrainConfig

_MISSING = object()


def _derived(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed keys the job sets through its own fields (dotted path → value)."""
    zero = cfg.zero
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.global_batch_size,
        "zero_optimization.stage": zero.stage,
        "zero_optimization.offload_optimizer.device": zero.offload_optimizer,
        "zero_optimization.offload_param.device": zero.offload_param,
        "bf16.enabled": cfg.dtype == "bfloat16",
        "fp16.enabled": cfg.dtype == "float16",
        "optimizer.params.lr": cfg.lr,
    }


def _field_of(path: str) -> str:
    return {
        "train_micro_batch_size_per_gpu": "micro_batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "train_batch_size": "micro_batch_size x grad_accum x workers",
        "zero_optimization.stage": "zero.stage",
        "zero_optimization.offload_optimizer.device": "zero.offload_optimizer",
        "zero_optimization.offload_param.device": "zero.offload_param",
        "bf16.enabled": "dtype",
        "fp16.enabled": "dtype",
        "optimizer.params.lr": "lr",
    }[path]


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """DeepSpeed's JSON for this job. ValueError (one line) when a raw key contradicts the job."""
    derived = _derived(cfg)
    raw = cfg.zero.deepspeed
    for path, value in derived.items():
        given = _get(raw, path)
        if given is not _MISSING and given != value:
            raise ValueError(f"zero.deepspeed.{path}={given!r} contradicts {_field_of(path)} (which makes it "
                             f"{value!r}); set it in one place")
    ds: dict[str, Any] = {
        "optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": cfg.weight_decay, "torch_adam": True}},
        "gradient_clipping": cfg.max_grad_norm,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    for path, value in derived.items():
        _set(ds, path, value)
    if cfg.zero.nvme_path:
        for part in ("offload_optimizer", "offload_param"):
            if getattr(cfg.zero, part) == "nvme":
                ds["zero_optimization"][part]["nvme_path"] = cfg.zero.nvme_path
    if cfg.zero.offload_optimizer != "none":
        ds["zero_force_ds_cpu_optimizer"] = False  # torch AdamW on the offloaded state: no CPU-Adam build
    merged = _merge(ds, raw)
    check_deepspeed_json(merged)
    return merged


def check_deepspeed_json(ds: dict[str, Any]) -> None:
    """Consistency of a (merged) DeepSpeed config: ZeRO stage vs offload, precision flags."""
    zero = ds.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_optimization.stage={stage!r}: DeepSpeed knows stages 0-3")
    param_dev = (zero.get("offload_param") or {}).get("device", "none")
    opt_dev = (zero.get("offload_optimizer") or {}).get("device", "none")
    if param_dev not in (None, "none") and stage != 3:
        raise ValueError(f"zero_optimization.offload_param.device={param_dev!r} needs ZeRO stage 3, got {stage}")
    if opt_dev not in (None, "none") and stage == 0:
        raise ValueError(f"zero_optimization.offload_optimizer.device={opt_dev!r} needs ZeRO stage 1-3, got 0")
    if (ds.get("bf16") or {}).get("enabled") and (ds.get("fp16") or {}).get("enabled"):
        raise ValueError("bf16.enabled and fp16.enabled are both true; choose one precision (dtype)")


def prepare(on_gpu: bool, build_shm_op: bool = False) -> None:
    """Before `import deepspeed` in a worker: pick the accelerator; on CPU skip the shm comm op build."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if on_gpu else "cpu")
    if not on_gpu and not build_shm_op:
        # `import deepspeed.comm.torch as m` would bind the torch package (deepspeed.comm re-exports it).
        comm = importlib.import_module("deepspeed.comm.torch")
        comm.build_shm_op = lambda: None  # type: ignore[attr-defined]
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


def initialize(model: Any, ds_config: dict[str, Any]) -> Any:
    """A DeepSpeed engine over the model's trainable (LoRA) parameters, on the process group Ray Train made."""
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    return engine
