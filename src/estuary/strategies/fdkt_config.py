"""Parameters of FDKT (Li et al. 2024, arXiv 2405.14212): DP synthetic demonstrations → LLM augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ConfigDict

from estuary.client.dp_generator import GeneratorConfig
from estuary.knowledge.filtering import FilterConfig
from estuary.knowledge.llm_data import GenerateConfig


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
    augment: GenerateConfig = field(
        default_factory=GenerateConfig,
        metadata={"help": "LLM augmentation: few-shot prompts per label from the kept samples, samples each."})
    filter_augmented: bool = field(
        default=True, metadata={"help": "Filter the LLM's augmented samples the same way (judge included)."})
    embedder: str = field(
        default="minilm-l6", metadata={"help": "Sentence-embedding model of the server filter (spec or alias)."})
    steps: int | None = field(
        default=None, metadata={"help": "Local steps per round on private + augmented data; None = training.steps."})
    max_augmented: int | None = field(
        default=None, metadata={"help": "Cap on augmented examples sent to each client per round (None: all)."})
    include_synthetic: bool = field(
        default=True, metadata={"help": "Also train clients on the kept DP synthetic samples of all clients."})
    server_adapter: str | None = field(
        default=None, metadata={"help": "Server LLM adapter (name or name@vN) used for judging and augmenting."})
