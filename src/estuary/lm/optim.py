"""AdamW over a model's trainable (adapter) parameters, with its state exported as plain CPU data so that a
client's optimizer can travel with its state and resume on any worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def export_optimizer(optimizer: torch.optim.Optimizer, names: list[str], step: int) -> dict[str, Any]:
    raw = optimizer.state_dict()
    state = {
        idx: {k: (v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for idx, s in raw["state"].items()
    }
    groups = [dict(g) for g in raw["param_groups"]]
    return {"state": state, "param_groups": groups, "param_names": list(names), "step": step}


def import_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], names: list[str], params: Sequence[torch.Tensor]
) -> int:
    same_shapes = all(
        not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape == params[int(i)].shape
        for i, s in saved["state"].items()
        for v in s.values()
    )
    if list(saved.get("param_names", [])) != names or not same_shapes:
        raise ValueError("optimizer_state was saved for different trainable parameters (LoRA spec or model differ)")
    optimizer.load_state_dict({"state": saved["state"], "param_groups": saved["param_groups"]})
    return int(saved.get("step", 0))


def adamw(
    named: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
    optimizer_state: dict[str, Any] | None,
) -> tuple[torch.optim.Optimizer, list[str], list[torch.nn.Parameter], int]:
    """AdamW over the named trainable parameters, resumed from an exported `optimizer_state` (with this
    call's lr and weight decay); returns (optimizer, names, params, the step it resumes at)."""
    names, params = [n for n, _ in named], [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    start_step = 0
    if optimizer_state is not None:
        start_step = import_optimizer(optimizer, optimizer_state, names, params)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = lr, weight_decay
    return optimizer, names, params, start_step
