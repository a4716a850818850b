"""Server-side knowledge processing shared by methods: embeddings, filters, LLM prompts and task data."""

from estuary.knowledge.embedding import TextEmbedder
from estuary.knowledge.filtering import FilterConfig, FilterResult, filter_examples, length_filter
from estuary.knowledge.llm_data import (
    AugmentConfig,
    GenerateConfig,
    augment,
    augment_all_labels,
    generate_labelled,
    llm_judge,
    llm_sample_judge,
)

__all__ = ["AugmentConfig", "FilterConfig", "FilterResult", "GenerateConfig", "TextEmbedder", "augment",
           "augment_all_labels", "filter_examples", "generate_labelled", "length_filter", "llm_judge",
           "llm_sample_judge"]
