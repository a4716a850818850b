"""Parameters of DistilDP (Flemings & Annavaram 2024, arXiv 2403.00932): DP distillation through synthetic text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict

from estuary.client.dp_generator import GeneratorConfig

DEFAULT_TEACHER = "qwen2.5-0.5b"  # larger than the default SmolLM2-135M students, as the paper compresses


def _text_generator() -> GeneratorConfig:
    # Text, not labelled demonstrations: longer samples, more of them; the sample ends at its first newline.
    return GeneratorConfig(epochs=2.0, batch_size=16, max_length=128, samples_per_label=64, oversample=2.0,
                           max_new_tokens=96, min_words=5)


@dataclass
class DistilDPConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys are errors

    teacher_model: str | None = field(
        default=DEFAULT_TEACHER,
        metadata={"help": "Base model of each client's DP teacher (alias, HF id or folder; LoRA on it is DP-trained). "
                  "Larger than the students by default, as in the paper (GPT-2-Large → DistilGPT-2): Qwen2.5-0.5B "
                  "teaching SmolLM2-135M. privacy.generator_model, when set, takes precedence; null (and no "
                  "privacy.generator_model): the client's own SLM teaches itself."})
    generator: GeneratorConfig = field(
        default_factory=_text_generator,
        metadata={"help": "The DP teacher's training and sampling: DP fine-tuning of a LoRA adapter on the teacher "
                  "model on the client's private text (ε from the job's privacy section), then sampling "
                  "(samples_per_label = synthetic texts per client per round)."})
    distill_weight: float = field(
        default=0.4, metadata={"help": "λ: weight of the soft-label KL against the hard-label cross-entropy, "
                               "(1-λ)·CE + λ·KL (paper: 0.4)."})
    hidden_weight: float = field(
        default=0.0, metadata={"help": "β: weight of the hidden-state MSE (last layer, normalised by the teacher "
                               "states' mean square; through a learned projection when the widths differ); "
                               "0 (the default, as the reference code's published commands: alpha_cos = 0) "
                               "turns it off."})
    kd_reduction: Literal["token_mean", "batchmean"] = field(
        default="batchmean",
        metadata={"help": "How the KL is weighed against the CE (a token mean): batchmean (the default) = summed "
                  "over a sequence's positions and divided by the batch's sequences, as the reference code's "
                  "KLDivLoss(reduction='batchmean') (about as many times heavier as a sequence has target "
                  "tokens); token_mean = the mean over target positions. docs/methods.md compares the two "
                  "(Yelp, ε = 2: 56.80 against 60.08 test perplexity)."})
    temperature: float = field(default=1.0, metadata={"help": "Distillation temperature T (paper: 1)."})
    topk: int = field(default=32, metadata={"help": "Teacher distribution entries per token sent with each sample."})
    tail_bucket: bool = field(
        default=True, metadata={"help": "The teacher's mass outside its top k is one more bucket of the KL."})
    steps: int | None = field(
        default=None, metadata={"help": "Student steps per round on the pooled synthetic text; None = "
                                "training.steps."})
    max_synthetic: int | None = field(
        default=None, metadata={"help": "Cap on pooled synthetic samples per round (seeded choice; None: all)."})
    hard_label_baseline: bool = field(
        default=True, metadata={"help": "Also train a hard-label-only twin of each student (λ = β = 0) on the "
                                "same synthetic text from the same start, reported as hard_labels/*."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
