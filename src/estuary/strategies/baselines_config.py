"""Parameters of the three baselines every seed paper reports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ZeroShotConfig:
    evaluate_server: bool = field(
        default=True, metadata={"help": "Also evaluate the pretrained server LLM (if evaluation.server)."}
    )


@dataclass
class StandaloneConfig:
    steps: int | None = field(
        default=None, metadata={"help": "Local steps per round; None = training.steps."}
    )


@dataclass
class CentralizedConfig:
    steps: int | None = field(
        default=None,
        metadata={
            "help": "Steps per round on the pooled data; None = training.steps × number of clients "
            "(the examples all clients see together in a round)."
        },
    )
