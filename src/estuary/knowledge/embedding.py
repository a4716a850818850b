"""Sentence embeddings for server-side filtering: all-MiniLM-L6-v2 (or any HF encoder), mean-pooled, L2-normed.

This is what `sentence-transformers` does for all-MiniLM-L6-v2 (its `1_Pooling` is mean pooling and
`2_Normalize` follows); done here with plain transformers so no extra dependency is needed. Any model spec
`estuary.models.resolve_model` accepts works (alias, local folder, hub id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class TextEmbedder:
    """Embeds texts into unit vectors (cosine similarity = dot product)."""

    def __init__(self, model: str = "minilm-l6", *, batch_size: int = 64, max_length: int = 128,
                 device: str = "cpu") -> None:
        self.spec = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        from estuary.models import resolve_model

        path = resolve_model(self.spec)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to(self.device).eval()

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32 array of L2-normalised embeddings ([0, dim] for no texts)."""
        import torch

        self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)
