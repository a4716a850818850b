"""Server-side knowledge processing shared by methods: embeddings, filters, LLM prompts and task data."""

from estuary.knowledge.embedding import TextEmbedder
from estuary.knowledge.filtering import FilterConfig, FilterResult, filter_examples
from estuary.knowledge.llm_data import GenerateConfig, augment, generate_labelled, llm_judge, llm_sample_judge

__all__ = ["FilterConfig", "FilterResult", "GenerateConfig", "TextEmbedder", "augment", "filter_examples",
           "generate_labelled", "llm_judge", "llm_sample_judge"]
