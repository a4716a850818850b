"""Server-side filtering of synthetic or generated examples (FDKT's filter, reused on augmented data).

Steps, each counted in `FilterResult.stats`:
1. validity: empty, malformed or too short/long texts are dropped;
2. duplicates: the same text after folding case, spaces and punctuation, then near duplicates whose
   sentence embeddings have cosine similarity >= `near_duplicate` with an already kept text (or with a
   reference set, e.g. the demonstrations the augmented samples were generated from);
3. clustering: k-means over the embeddings, per label (`clusters_per_label`);
4. judging: the LLM sees up to `judge_examples` texts of each cluster (those nearest its centre) and judges
   whether the cluster fits its label (by labelling each text itself, or asked Yes/No); a rejected
   cluster's samples are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict

from estuary.data.task import Example, Task

# (label, texts shown) for every cluster → (verdict True/False/None=unclear, raw answer) for every cluster
Judge = Callable[[Sequence[tuple[int, list[str]]]], list[tuple[bool | None, str]]]
STAGES = ("input", "invalid", "duplicate", "near_duplicate", "judged_out", "kept")


@dataclass(frozen=True)
class FilterConfig:
    """How synthetic and generated examples are filtered on the server."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys in a job are errors

    min_words: int = field(default=3, metadata={"help": "Drop texts with fewer words."})
    max_words: int | None = field(default=128, metadata={"help": "Drop texts with more words (None: no cap)."})
    near_duplicate: float = field(
        default=0.95, metadata={"help": "Cosine similarity at or above which a text is a near duplicate (1: off)."})
    clusters_per_label: int = field(default=4, metadata={"help": "k-means clusters per label for the LLM judge."})
    judge: bool = field(
        default=True, metadata={"help": "Have the server LLM judge whether each cluster fits its label."})
    judge_mode: Literal["classify", "ask"] = field(
        default="classify", metadata={"help": (
            "classify: the LLM labels each shown text (verbalizer log-likelihood) and the cluster is kept when "
            "at least `judge_agreement` of them get the cluster's label; ask: a chat Yes/No question about the "
            "cluster (a 0.5B judge answered No to every cluster of real SST-2 reviews).")})
    judge_agreement: float = field(
        default=0.5, metadata={"help": "classify mode: share of shown texts the LLM must label as the cluster's."})
    judge_tolerance: int = field(
        default=0, metadata={"help": (
            "classify mode, for ordinal labels such as star ratings: a shown text agrees with its cluster when the "
            "LLM's label is within this many label positions of the cluster's (1: a 3-star text read as 2 or 4 "
            "stars agrees). On Yelp a 0.5B judge kept no 1- to 3-star sample at 0 (docs/results.md).")})
    judge_examples: int = field(default=5, metadata={"help": "Texts per cluster shown to the judge."})
    judge_unclear: Literal["keep", "drop"] = field(
        default="keep", metadata={"help": "ask mode: a cluster whose verdict is neither Yes nor No."})

    def __post_init__(self) -> None:
        if self.judge_tolerance < 0:
            raise ValueError(f"judge_tolerance must be >= 0 label positions (got {self.judge_tolerance})")


@dataclass
class FilterResult:
    kept: list[Example]
    stats: dict[str, int]
    clusters: list[dict[str, Any]] = field(default_factory=list)  # label, size, shown, verdict, answer


def fold(text: str) -> str:
    """Case, space and punctuation folded text: the key of exact-duplicate detection."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def _valid(text: str, cfg: FilterConfig) -> bool:
    words = len(text.split())
    return bool(text) and words >= cfg.min_words and (cfg.max_words is None or words <= cfg.max_words)


def _near_duplicates(emb: np.ndarray, threshold: float, reference: np.ndarray | None) -> np.ndarray:
    """Boolean mask of rows that are within `threshold` cosine of an earlier kept row or of `reference`."""
    drop = np.zeros(len(emb), dtype=bool)
    if threshold >= 1.0 or not len(emb):
        return drop
    if reference is not None and len(reference):
        drop |= (emb @ reference.T).max(axis=1) >= threshold
    sims = emb @ emb.T
    kept: list[int] = []
    for i in range(len(emb)):
        if drop[i]:
            continue
        if kept and sims[i, kept].max() >= threshold:
            drop[i] = True
        else:
            kept.append(i)
    return drop


def _clusters(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    if len(emb) <= 1 or k <= 1:
        return np.zeros(len(emb), dtype=int)
    from sklearn.cluster import KMeans

    k = min(k, len(emb))
    return np.asarray(KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(emb), dtype=int)


def filter_examples(
    examples: Sequence[Example],
    task: Task,
    cfg: FilterConfig,
    *,
    embed: Callable[[Sequence[str]], np.ndarray],
    judge: Judge | None = None,
    reference: Sequence[str] = (),
    seed: int = 0,
) -> FilterResult:
    """Filter labelled `examples` (see the module doc); `reference` texts count as already kept."""
    stats = dict.fromkeys(STAGES, 0)
    stats["input"] = len(examples)
    seen = {fold(t) for t in reference}
    candidates: list[Example] = []
    for ex in examples:
        text = ex.text.strip()
        if not _valid(text, cfg):
            stats["invalid"] += 1
        elif fold(text) in seen:
            stats["duplicate"] += 1
        else:
            seen.add(fold(text))
            candidates.append(ex)
    emb = embed([ex.text for ex in candidates])
    ref_emb = embed(list(reference)) if reference and cfg.near_duplicate < 1.0 else None
    near = _near_duplicates(emb, cfg.near_duplicate, ref_emb)
    stats["near_duplicate"] = int(near.sum())
    candidates = [ex for ex, d in zip(candidates, near, strict=True) if not d]
    emb = emb[~near]
    keep = np.ones(len(candidates), dtype=bool)
    clusters: list[dict[str, Any]] = []
    if cfg.judge and judge is not None and candidates:
        groups: list[tuple[int, np.ndarray]] = []
        labels = np.array([-1 if ex.label is None else ex.label for ex in candidates])
        for label in sorted(set(labels.tolist())):
            idx = np.flatnonzero(labels == label)
            assign = _clusters(emb[idx], cfg.clusters_per_label, seed + label)
            for c in sorted(set(assign.tolist())):
                groups.append((label, idx[assign == c]))
        shown = []
        for label, members in groups:
            centre = emb[members].mean(axis=0)
            order = members[np.argsort(-(emb[members] @ centre))][: cfg.judge_examples]
            shown.append((label, [candidates[i].text for i in order]))
        verdicts = judge(shown)
        for (label, members), (texts_shown, (verdict, answer)) in zip(
                groups, zip([s for _, s in shown], verdicts, strict=True), strict=True):
            accepted = verdict is True or (verdict is None and cfg.judge_unclear == "keep")
            keep[members] = accepted
            clusters.append({"label": int(label), "size": len(members), "shown": texts_shown,
                             "verdict": verdict, "answer": answer, "kept": accepted})
        stats["judged_out"] = int((~keep).sum())
    kept = [ex for ex, k in zip(candidates, keep, strict=True) if k]
    stats["kept"] = len(kept)
    return FilterResult(kept=kept, stats=stats, clusters=clusters)
