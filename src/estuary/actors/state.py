"""ClientState: everything a client owns between tasks, as plain data.

In pooled mode it lives outside the worker (Ray object store, written to the run folder at each
checkpoint) and travels with each task; in dedicated mode the same object is handed to the same
actor every time. One format, two placements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClientState:
    client_id: str
    model: str  # model spec this client's SLM is built from
    adapter: dict[str, torch.Tensor] | None = None  # LoRA weights (PEFT state dict); None = initial
    optimizer: dict[str, Any] | None = None  # AdamW state_dict, when kept across rounds
    rounds_trained: int = 0
    steps_trained: int = 0
    privacy: dict[str, Any] = field(default_factory=dict)  # accountant state (privacy ledger)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-owned per-client data

    def nbytes(self) -> int:
        total = 0
        for t in (self.adapter or {}).values():
            total += t.numel() * t.element_size()
        return total
