"""Parameters of the baselines: the three every seed paper reports, and the server LLM's centralized bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVER_ENGINES = ("auto", "served", "transformers")


@dataclass
class ZeroShotConfig:
    evaluate_server: bool = field(
        default=True, metadata={"help": "Also evaluate the pretrained server LLM (if evaluation.server)."}
    )
    server_engine: str = field(
        default="auto", metadata={"help": "How the pretrained server LLM is measured. 'served': through the "
                                  "run's Serve/vLLM deployment on the first llm_eval_size test examples, the very "
                                  "measurement the mutual methods make of their LLM (its start and every version); "
                                  "'transformers': the reference path on the whole test split, prompts fitted to "
                                  "training.max_length; 'auto': 'served' when the method evaluates a served LLM (its "
                                  "llm_eval_size > 0: FedMKT, CrossLM), else 'transformers'."})
    llm_eval_size: int | None = field(
        default=None, metadata={"help": "Test examples for the 'served' engine; None = the method's "
                                "llm_eval_size, its default included (else the whole test split)."})

    def __post_init__(self) -> None:
        if self.server_engine not in SERVER_ENGINES:
            raise ValueError(f"server_engine must be one of {', '.join(SERVER_ENGINES)} (got {self.server_engine!r})")


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
                                "llm_eval_size, its default included (else 100)."})
