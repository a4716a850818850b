"""Parameters of CrossLM (Deng et al. 2023, arXiv 2312.05842): SLMs score LLM-generated data, the LLM
learns from the well-scored part, both train on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict

from estuary.knowledge.filtering import FilterConfig
from estuary.knowledge.llm_data import GenerateConfig

CALIBRATIONS = ("prior", "none")


def _clean_only() -> FilterConfig:
    return FilterConfig(judge=False)


@dataclass
class CrossLMConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys are errors

    generate: GenerateConfig = field(
        default_factory=lambda: GenerateConfig(prompts_per_label=16, samples_per_prompt=4),
        metadata={"help": "LLM data generation per round: label-conditioned prompts, samples each."})
    filter: FilterConfig = field(
        default_factory=_clean_only,
        metadata={"help": "Cleaning of the generated samples before scoring (validity, duplicates; no judge)."})
    min_score: float = field(
        default=0.5, metadata={"help": "Keep a sample when the clients' mean probability of its label is >= this."})
    consensus: float = field(
        default=0.5, metadata={"help": "... and at least this fraction of clients predicts its label (argmax)."})
    calibration: str = field(
        default="prior", metadata={"help": (
            "prior: each client divides its label probabilities by its own mean prediction over the round's "
            "samples, rescaled to the samples' intended label mix, before scoring (a label-skewed client "
            "otherwise scores every minority-label sample low, and the mean keeps only majority-label samples: "
            "90 of 179 SST-2 samples passed at Dirichlet 0.5, none negative); none: raw probabilities, as published.")})
    local_steps: int | None = field(
        default=None, metadata={"help": "Phase-1 steps on private data; None = training.steps."})
    transfer_steps: int | None = field(
        default=None, metadata={"help": "Phase-2 steps on private + selected data; None = training.steps."})
    train_llm: bool = field(
        default=True, metadata={"help": "Fine-tune the server LLM (Ray Train + DeepSpeed) on the selected data."})
    llm_task_records: bool = field(
        default=True, metadata={"help": (
            "Train the LLM on the selected samples as task records too (the task's prompt of the sample → its "
            "label word, as llm_centralized trains on real data), beside the generation records (label prompt → "
            "sample, which steer what it writes): the paper trains both sides on the selected data and claims "
            "the LLM's task accuracy rises. False: generation records only (Estuary's earlier default). "
            "docs/methods.md gives both settings' LLM accuracy per round.")})
    llm_train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Server training settings (estuary.train TrainConfig fields: steps, lr, zero, ...)."})
    llm_continue: bool = field(
        default=False, metadata={"help": (
            "Each round's LLM adapter starts from the last published version and trains on that round's selected "
            "samples only, so the LLM accumulates the clients' feedback over rounds; False: a fresh adapter each "
            "round, trained on every sample selected so far.")})
    adapter_name: str = field(default="crosslm", metadata={"help": "Name of the published server adapter."})
    llm_eval_size: int = field(
        default=100, metadata={"help": "Test examples the served LLM is evaluated on each round (0: off)."})
    llm_channel_eval: bool = field(
        default=True, metadata={"help": "Also score the LLM as a noisy channel each round (the label whose "
                                        "generation prompt makes the test text likeliest; metric "
                                        "llm/test/channel_accuracy): the generator CrossLM trains, read as a "
                                        "classifier, beside the direct verbalizer accuracy."})
    general_task: str = field(
        default="e2e", metadata={"help": "Held-out general text set whose perplexity tracks the LLM's general "
                                 "ability (a task name: its test split's texts)."})
    general_size: int = field(default=64, metadata={"help": "General-set texts (0: off)."})

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)} (got {self.calibration!r})")
