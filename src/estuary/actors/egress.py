"""Egress: the one typed record allowed to leave a client.

A client's private examples never cross this boundary; what does (metrics, DP synthetic samples with
their ledger entries, top-k distributions, scores) is named and typed here, so the privacy boundary is
this type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from estuary.data.task import Example
    from estuary.privacy.ledger import LedgerEntry


@dataclass
class Egress:
    client_id: str
    round: int
    strategy: str
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. train/loss, eval/accuracy, test/macro_f1
    losses: list[float] = field(default_factory=list)  # per-step training losses of this task
    payload: dict[str, Any] = field(default_factory=dict)  # method-specific, privacy-reviewed content
    wall_s: float = 0.0
    worker: str = ""
    examples: int = 0  # training examples processed in this task
    attempts: int = 1  # filled by the pool: tries it took (retries after crashes or errors)
    privacy: list[LedgerEntry] = field(default_factory=list)  # ledger entries of this task → privacy.jsonl
    synthetic: list[Example] = field(default_factory=list)  # DP synthetic examples (need a "release" entry)

    def __post_init__(self) -> None:
        for k, v in self.metrics.items():
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):  # NaN or ±inf: no summary of it
                raise ValueError(f"client {self.client_id}: metric {k!r} is not a finite number ({v!r})")
        if self.synthetic and not any(e.op == "release" for e in self.privacy):
            raise ValueError(
                f"client {self.client_id}: synthetic examples may leave only with their ledger 'release' entry "
                "(use ClientContext.dp_synthesize)"
            )

    @property
    def refusals(self) -> list[LedgerEntry]:
        """DP work this client refused in the task (its privacy budget would have been exceeded)."""
        return [e for e in self.privacy if e.op == "refused"]

    def privacy_rows(self) -> list[dict[str, Any]]:
        """The rows this task adds to privacy.jsonl."""
        return [{**e.row(), "strategy": self.strategy, "round": self.round, "client": self.client_id}
                for e in self.privacy]

    def record(self) -> dict[str, Any]:
        """The row written to clients.jsonl."""
        return {
            "strategy": self.strategy,
            "round": self.round,
            "client": self.client_id,
            "metrics": self.metrics,
            "loss_first": self.losses[0] if self.losses else None,
            "loss_last": self.losses[-1] if self.losses else None,
            "examples": self.examples,
            "wall_s": round(self.wall_s, 4),
            "worker": self.worker,
            "attempts": self.attempts,
        }
