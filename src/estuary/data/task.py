"""Task and example types shared by data loading, client training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TaskKind = Literal["classification", "generation"]


@dataclass(frozen=True)
class Example:
    """One data point. `label` indexes `Task.label_words` (classification) or is None (generation)."""

    text: str
    label: int | None = None
    text_pair: str | None = None  # second segment (RTE hypothesis); None for single-text tasks
    target: str | None = None  # generation target (E2E reference); the LM predicts it after the prompt
    domain: str | None = None  # e.g. Yelp business category, for partitioning by domain
    uid: str = ""  # stable id "<task>/<split>/<row>" for tracing and canary tests


@dataclass(frozen=True)
class Task:
    """How a data set is turned into prompts and scored.

    Classification: the model reads `prompt(example)` and the label is the verbalizer
    `label_words[label]` continuing it (each starts with a space). Evaluation compares the
    log-likelihood of every label word; training minimises the cross-entropy of the true one.
    Generation: the model is scored (perplexity) on `target` given `prompt(example)`, or on the
    whole text when `target` is None.
    """

    name: str
    kind: TaskKind
    template: str  # str.format template over {text}, {text_pair} and {domain}
    label_words: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    description: str = ""  # one sentence describing the task, for LLM prompts in later methods
    extra: dict[str, str] = field(default_factory=dict)  # "subject": what one text is, public (DP generator prompts)
    targets: bool = False  # generation: examples carry a `target` after the prompt (not free text to write)

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    @property
    def paired(self) -> bool:
        """Whether an example is two texts (premise and hypothesis)."""
        return "{text_pair}" in self.template

    def prompt(self, example: Example) -> str:
        return self.template.format(text=example.text, text_pair=example.text_pair or "", domain=example.domain or "")

    def completion(self, example: Example) -> str:
        """The text the model should produce after the prompt (label word or target)."""
        if self.kind == "classification":
            assert example.label is not None, f"{example.uid}: classification example without label"
            return self.label_words[example.label]
        return example.target if example.target is not None else ""
