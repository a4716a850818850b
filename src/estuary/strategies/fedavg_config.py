"""Parameters of `fedavg`: FedAvg of the clients' LoRA adapters (FedIT)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FedAvgConfig:
    steps: int | None = field(
        default=None, metadata={"help": "Local steps per round, each client from the global adapter; "
                                "None = training.steps (the same local work as standalone)."}
    )
    evaluate_clients: bool = field(
        default=True, metadata={"help": "After averaging, every client that trained in the round evaluates the "
                                "global adapter on its own eval split (client/eval/*, one evaluation-only task "
                                "each); the global test split is scored once (client/test/*). False: only the "
                                "global test split, by one client."}
    )
