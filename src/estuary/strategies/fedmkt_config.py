"""Parameters of FedMKT (Fan et al., COLING 2025, arXiv 2406.02224): mutual top-k distillation between the
server LLM and heterogeneous client SLMs over a public data set, across tokenizers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict


@dataclass
class FedMKTConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys are errors

    public_size: int = field(
        default=64, metadata={"help": "Public examples: a label-stratified sample of the task's official "
                              "validation split (never part of a client partition), as prompt + label word."})
    top_k: int = field(
        default=128, metadata={"help": "Top-k tokens each model sends per position (published: 128). Clamped to "
                               "server.max_logprobs, the most the LLM's deployment returns (the log says so once): "
                               "the LLM and the clients then all use the clamped k."})
    slm_targets: Literal["after_update", "previous_round"] = field(
        default="after_update",
        metadata={"help": "Which LLM distributions the SLMs distil from in a round: after_update = recomputed on the "
                  "public texts with the adapter the LLM published this round, after its update (the reference "
                  "code's on_epoch_end); previous_round = those the LLM's own update started from (the adapter of "
                  "the round before), one top-k pass less per round."})
    public_epochs: float = field(
        default=1.0, metadata={"help": "Passes over the public set per round of the LLM's distillation and of each "
                               "SLM's: steps = ceil(public_epochs × public samples / batch) (the SLMs' "
                               "training.batch_size; the LLM's global batch, micro_batch_size × grad_accum × "
                               "workers). distill_steps and llm_train.steps, when given, set the steps instead."})
    selection: Literal["greater", "weighted_mean"] = field(
        default="greater", metadata={"help": "Teacher per public sample by reward exp(-CE) on the ground truth: "
                                     "greater = the best of the model itself and the aligned others; "
                                     "weighted_mean = their mixture weighted by softmax of the rewards."})
    selection_metric: Literal["own", "aligned"] = field(
        default="own", metadata={"help": "The CE that ranks teachers: own = each model's own CE on the text in "
                                 "its own tokenisation (FuseLLM/FedMKT's metric_ce); aligned = the CE of its rows "
                                 "aligned to the target's tokens (the alignment's losses count against it)."})
    distill_weight: float = field(
        default=0.1, metadata={"help": "λ of (1-λ)·LM + λ·KD, for the LLM and the SLMs alike (published 0.1)."})
    temperature: float = field(default=1.0, metadata={"help": "Distillation temperature (published 1.0)."})
    tail_bucket: bool = field(
        default=True, metadata={"help": "KD over the top-k plus one bucket for the rest of the mass (see "
                                "estuary.lm.objective); False renormalises the teacher over its top k."})
    lm_loss: Literal["text", "completion"] = field(
        default="completion", metadata={"help": "Ground truth of a public text, for every model's language-model "
                                        "term and the own CE that ranks teachers: its completion (the label word;"
                                        " FedMKT's reference code masks the prompt) or every token (text)."})
    local_steps: int | None = field(
        default=None, metadata={"help": "Phase-1 steps on private data; None = training.steps."})
    distill_steps: int | None = field(
        default=None, metadata={"help": "Phase-2 SLM steps on the public texts towards the chosen targets; "
                                "None = public_epochs over the public set."})
    train_llm: bool = field(
        default=True, metadata={"help": "Distil the server LLM (Ray Train + DeepSpeed, LoRA) from the clients' "
                                "aligned knowledge and publish its adapter."})
    llm_train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Server training settings (estuary.train TrainConfig fields: steps, lr, lora, zero, ...); "
                  "without steps, public_epochs sets them; objective.distill_weight/temperature/tail_bucket "
                  "default to the values above."})
    llm_continue: bool = field(
        default=True, metadata={"help": "Each round's LLM adapter starts from the last published version, so the "
                                "LLM accumulates the clients' knowledge over rounds; False: a fresh one per round."})
    adapter_name: str = field(default="fedmkt", metadata={"help": "Name of the published server adapter."})
    llm_eval_size: int = field(
        default=100, metadata={"help": "Test examples the served LLM is evaluated on each round (0: off)."})

    def __post_init__(self) -> None:
        if self.public_size < 1 or self.top_k < 1:
            raise ValueError(f"public_size and top_k must be >= 1 (got {self.public_size}, {self.top_k})")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.public_epochs > 0:
            raise ValueError(f"public_epochs must be > 0, got {self.public_epochs}")
