"""Parameters of the no-op strategy (orchestration overhead measurements)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NoopConfig:
    sleep_s: float = field(default=0.0, metadata={"help": "Seconds each client step sleeps (simulated work)."})
    payload_floats: int = field(
        default=0, metadata={"help": "Floats each client keeps in its state (simulated adapter size)."}
    )
