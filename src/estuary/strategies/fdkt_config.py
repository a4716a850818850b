"""Parameters of FDKT (Li et al. 2024, arXiv 2405.14212): DP synthetic demonstrations → LLM augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict

from estuary.client.dp_generator import GeneratorConfig
from estuary.knowledge.filtering import FilterConfig
from estuary.knowledge.llm_data import AugmentConfig


@dataclass
class FDKTConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys are errors

    generator: GeneratorConfig = field(
        default_factory=GeneratorConfig,
        metadata={"help": "Client DP generator: DP fine-tuning (ε from the job's privacy section), sampling, "
                  "client-side filtering and deduplication."})
    filter: FilterConfig = field(
        default_factory=FilterConfig,
        metadata={"help": "Server filter of the clients' synthetic samples: validity, duplicates, k-means clusters "
                  "over all labels judged sample by sample by the LLM (the reference; per-label clusters and "
                  "per-cluster verdicts are options)."})
    augment_prompt: Literal["all_labels", "one_label"] = field(
        default="all_labels", metadata={"help": (
            "all_labels (the reference): each chat prompt shows demonstrations of every label and the LLM writes "
            "and labels several samples per reply (augment.prompts, shots_per_label, samples_per_reply); "
            "one_label: plain few-shot prompts of one label's kept samples, one sample per completion, labelled "
            "by the prompt (augment.prompts_per_label, shots, samples_per_prompt; Estuary's earlier default).")})
    augment: AugmentConfig = field(
        default_factory=AugmentConfig,
        metadata={"help": "LLM augmentation from the kept samples: prompt counts and sampling (see augment_prompt)."})
    filter_augmented: Literal["length", "clean", "full"] = field(
        default="length", metadata={"help": (
            "Filter of the LLM's augmented samples. length (the reference): drop those under "
            "augmented_min_words words, nothing else; clean: validity and exact duplicates (filter.min_words, "
            "max_words); full: the whole server filter again, judge included (Estuary's earlier default).")})
    augmented_min_words: int = field(
        default=10, metadata={"help": "filter_augmented length: augmented samples with fewer words are dropped."})
    embedder: str = field(
        default="minilm-l6", metadata={"help": "Sentence-embedding model of the server filter (spec or alias)."})
    steps: int | None = field(
        default=None, metadata={"help": "Local steps per round on private + augmented data; None = training.steps."})
    max_augmented: int | None = field(
        default=None, metadata={"help": "Cap on augmented examples sent to each client per round (None: all)."})
    send_raw_synthetic: bool = field(
        default=False, metadata={"help": (
            "Also send clients the DP synthetic samples the judge kept (all clients'), beside the augmented "
            "ones. Off: only the LLM's augmented samples go back, as in the reference.")})
    server_adapter: str | None = field(
        default=None, metadata={"help": "Server LLM adapter (name or name@vN) used for judging and augmenting."})
