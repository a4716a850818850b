"""Parameters of the baselines: the three every seed paper reports, and the server LLM's centralized bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class LLMCentralizedConfig:
    llm_train: dict[str, Any] | None = field(
        default=None, metadata={"help": "Server training settings (estuary.train TrainConfig fields); None = the "
                                "method's own method_params.llm_train, so the bound trains as the method's LLM does."})
    steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps; None = llm_train's steps × rounds (the method's LLM "
                                "steps over the whole run)."})
    adapter_name: str = field(default="llm_centralized", metadata={"help": "Name of the published adapter."})
    llm_eval_size: int | None = field(
        default=None, metadata={"help": "Test examples the trained LLM is evaluated on; None = the method's "
                                "method_params.llm_eval_size (else 100)."})
