"""What the driver asks of a client in a round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClientTask:
    client_id: str
    round: int
    kind: str = "train"  # strategy-defined: "train", "eval", ...
    evaluate: bool = True  # evaluate after the step (own eval split, and global test if configured)
    params: dict[str, Any] = field(default_factory=dict)  # strategy-defined instructions
