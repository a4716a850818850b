"""Server-side filtering of synthetic or generated examples (FDKT's filter, reused on augmented data).

Steps, each counted in `FilterResult.stats`:
1. validity: empty, malformed or too short/long texts are dropped;
2. duplicates: the same text after folding case, spaces and punctuation, then near duplicates whose
   sentence embeddings have cosine similarity >= `near_duplicate` with an already kept text (or with a
   reference set, e.g. the demonstrations the augmented samples were generated from);
3. clustering: k-means over the embeddings, over all labels together with ceil(N / `samples_per_cluster`)
   clusters (the FDKT reference), or per label (`clustering: per_label`, `clusters_per_label`);
4. judging, `judge_scope: per_sample` (the reference): the LLM sees each cluster's samples with their labels
   (at most `judge_max_listed` per prompt) and every sample is kept or dropped on its own;
   `per_cluster`: the LLM sees up to `judge_examples` texts of each cluster and label (those nearest its
   centre) and judges whether the cluster fits its label; a rejected cluster's samples are all dropped.

`length_filter` is the reference's only filter of the LLM's augmented samples: texts under a word count go.
"""

from __future__ import annotations

import math
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
JUDGE_COUNTS = ("judge_prompts", "judge_unparsed", "judge_out_of_range")  # per_sample judging, beside STAGES
JUDGE_MODES = {"per_sample": ("eligible", "classify"), "per_cluster": ("classify", "ask")}


@dataclass(frozen=True)
class SampleVerdict:
    """A per-sample judge's reading of one listed group: each sample kept or not (None: the answer could not
    be read), the raw answer, and how many numbers in it named no listed sample."""

    keep: list[bool] | None
    answer: str
    out_of_range: int = 0


# the (label, text) samples listed in each prompt → one SampleVerdict per prompt
SampleJudge = Callable[[Sequence[Sequence[tuple[int, str]]]], list[SampleVerdict]]


@dataclass(frozen=True)
class FilterConfig:
    """How synthetic and generated examples are filtered on the server."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys in a job are errors

    min_words: int = field(default=3, metadata={"help": "Drop texts with fewer words."})
    max_words: int | None = field(default=128, metadata={"help": "Drop texts with more words (None: no cap)."})
    near_duplicate: float = field(
        default=0.95, metadata={"help": "Cosine similarity at or above which a text is a near duplicate (1: off)."})
    clustering: Literal["all_labels", "per_label"] = field(
        default="all_labels", metadata={"help": (
            "all_labels: k-means over every label's samples together, ceil(N / samples_per_cluster) clusters "
            "(the FDKT reference); per_label: k-means within each label, clusters_per_label clusters each.")})
    samples_per_cluster: int = field(
        default=4, metadata={"help": "all_labels clustering: mean samples per cluster (the reference's 4)."})
    clusters_per_label: int = field(
        default=4, metadata={"help": "per_label clustering: k-means clusters per label for the LLM judge."})
    judge: bool = field(
        default=True, metadata={"help": "Have the server LLM judge the clustered samples."})
    judge_scope: Literal["per_sample", "per_cluster"] = field(
        default="per_sample", metadata={"help": (
            "per_sample: each sample is kept or dropped on its own, as the reference's judge does (the LLM "
            "sees a cluster's samples with their labels); per_cluster: one verdict per cluster and label, "
            "all its samples kept or dropped together (Estuary's earlier default).")})
    judge_mode: Literal["eligible", "classify", "ask"] = field(
        default="eligible", metadata={"help": (
            "per_sample scope: eligible (the reference): a chat prompt lists the cluster's samples numbered "
            "from 0 with their labels and the LLM answers 'The eligible samples: i j ...'; classify: the LLM "
            "labels each text (verbalizer log-likelihood) and a sample is kept when that is its label. "
            "per_cluster scope: classify: the cluster is kept when at least `judge_agreement` of its shown "
            "texts get its label; ask: a chat Yes/No question about the cluster (a 0.5B judge answered No to "
            "every cluster of real SST-2 reviews).")})
    judge_agreement: float = field(
        default=0.5, metadata={"help": "per_cluster classify: share of shown texts the LLM must label as the "
                                       "cluster's."})
    judge_tolerance: int = field(
        default=0, metadata={"help": (
            "classify mode, for ordinal labels such as star ratings: a text agrees with its label when the "
            "LLM's label is within this many label positions of it (1: a 3-star text read as 2 or 4 stars "
            "agrees). On Yelp a 0.5B per-cluster judge kept no 1- to 3-star sample at 0 "
            "(docs/results-log-2026-11.md).")})
    judge_examples: int = field(default=5, metadata={"help": "per_cluster: texts per cluster shown to the judge."})
    judge_max_listed: int = field(
        default=8, metadata={"help": (
            "per_sample: samples listed in one judge prompt; a larger cluster is judged in consecutive parts "
            "(the reference lists a whole cluster; the served model's max_model_len bounds a prompt).")})
    judge_max_tokens: int = field(
        default=64, metadata={"help": "eligible mode: tokens of the judge's answer (greedy)."})
    judge_unparsed: Literal["drop", "keep"] = field(
        default="drop", metadata={"help": (
            "eligible mode, an answer that names no index and is not 'none' (counted as judge_unparsed): drop "
            "its samples (the reference keeps none) or keep them.")})
    judge_unclear: Literal["keep", "drop"] = field(
        default="keep", metadata={"help": "per_cluster ask mode: a cluster whose verdict is neither Yes nor No."})

    def __post_init__(self) -> None:
        if self.judge_tolerance < 0:
            raise ValueError(f"judge_tolerance must be >= 0 label positions (got {self.judge_tolerance})")
        if self.judge_mode not in JUDGE_MODES[self.judge_scope]:
            raise ValueError(f"judge_mode {self.judge_mode} does not judge {self.judge_scope.replace('_', ' ')}: "
                             f"with judge_scope {self.judge_scope} use {' or '.join(JUDGE_MODES[self.judge_scope])}")
        if min(self.samples_per_cluster, self.clusters_per_label, self.judge_max_listed) < 1:
            raise ValueError("samples_per_cluster, clusters_per_label and judge_max_listed must be >= 1")


@dataclass
class FilterResult:
    kept: list[Example]
    stats: dict[str, int]
    clusters: list[dict[str, Any]] = field(default_factory=list)  # one record per judge prompt


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


def _groups(emb: np.ndarray, labels: np.ndarray, cfg: FilterConfig, seed: int) -> list[np.ndarray]:
    """Index arrays of the clusters (`clustering`); for the per_cluster judge each cluster split by label."""
    groups: list[np.ndarray] = []
    if cfg.clustering == "all_labels":
        assign = _clusters(emb, math.ceil(len(emb) / cfg.samples_per_cluster), seed)
        groups = [np.flatnonzero(assign == c) for c in sorted(set(assign.tolist()))]
    else:
        for label in sorted(set(labels.tolist())):
            idx = np.flatnonzero(labels == label)
            assign = _clusters(emb[idx], cfg.clusters_per_label, seed + label)
            groups += [idx[assign == c] for c in sorted(set(assign.tolist()))]
    if cfg.judge_scope == "per_cluster":
        groups = [g[labels[g] == y] for g in groups for y in sorted(set(labels[g].tolist()))]
    return groups


def _judge_clusters(groups: list[np.ndarray], emb: np.ndarray, labels: np.ndarray, candidates: list[Example],
                    keep: np.ndarray, judge: Judge, cfg: FilterConfig) -> list[dict[str, Any]]:
    """One verdict per (cluster, label) group on its `judge_examples` texts nearest the centre."""
    shown = []
    for members in groups:
        centre = emb[members].mean(axis=0)
        order = members[np.argsort(-(emb[members] @ centre))][: cfg.judge_examples]
        shown.append((int(labels[members[0]]), [candidates[i].text for i in order]))
    records = []
    for c, (members, (label, texts), (verdict, answer)) in enumerate(
            zip(groups, shown, judge(shown), strict=True)):
        accepted = verdict is True or (verdict is None and cfg.judge_unclear == "keep")
        keep[members] = accepted
        records.append({"scope": "per_cluster", "cluster": c, "label": label, "size": len(members),
                        "shown": texts, "verdict": verdict, "answer": answer, "kept": accepted})
    return records


def _judge_samples(groups: list[np.ndarray], candidates: list[Example], keep: np.ndarray, judge: SampleJudge,
                   cfg: FilterConfig, stats: dict[str, int]) -> list[dict[str, Any]]:
    """Each cluster listed (in parts of `judge_max_listed`) with its labels; each sample kept on its own."""
    parts = [(c, members[i:i + cfg.judge_max_listed]) for c, members in enumerate(groups)
             for i in range(0, len(members), cfg.judge_max_listed)]
    listed = [[(int(candidates[i].label or 0), candidates[i].text) for i in part] for _, part in parts]
    verdicts = judge(listed)
    records = []
    for (c, part), samples, verdict in zip(parts, listed, verdicts, strict=True):
        flags = verdict.keep
        if flags is None:
            stats["judge_unparsed"] += 1
            flags = [cfg.judge_unparsed == "keep"] * len(part)
        stats["judge_out_of_range"] += verdict.out_of_range
        keep[part] = flags
        records.append({"scope": "per_sample", "cluster": c, "size": len(part), "labels": [y for y, _ in samples],
                        "uids": [candidates[i].uid for i in part], "shown": [t for _, t in samples],
                        "answer": verdict.answer, "parsed": verdict.keep is not None, "kept": list(flags)})
    stats["judge_prompts"] = len(parts)
    return records


def _unique(examples: Sequence[Example], cfg: FilterConfig, reference: Sequence[str],
            stats: dict[str, int]) -> list[Example]:
    """The valid examples whose folded text is new (not in `reference`, not seen before)."""
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
    return candidates


def filter_examples(
    examples: Sequence[Example],
    task: Task,
    cfg: FilterConfig,
    *,
    embed: Callable[[Sequence[str]], np.ndarray],
    judge: Judge | None = None,
    sample_judge: SampleJudge | None = None,
    reference: Sequence[str] = (),
    seed: int = 0,
) -> FilterResult:
    """Filter labelled `examples` (see the module doc); `reference` texts count as already kept. The judge
    step runs when `cfg.judge` is on and the judge of `cfg.judge_scope` is given (`sample_judge` for
    per_sample, `judge` for per_cluster)."""
    stats = {**dict.fromkeys(STAGES, 0), **dict.fromkeys(JUDGE_COUNTS, 0), "input": len(examples)}
    candidates = _unique(examples, cfg, reference, stats)
    emb = embed([ex.text for ex in candidates])
    ref_emb = embed(list(reference)) if reference and cfg.near_duplicate < 1.0 else None
    near = _near_duplicates(emb, cfg.near_duplicate, ref_emb)
    stats["near_duplicate"] = int(near.sum())
    candidates = [ex for ex, d in zip(candidates, near, strict=True) if not d]
    emb = emb[~near]
    keep = np.ones(len(candidates), dtype=bool)
    clusters: list[dict[str, Any]] = []
    wanted = sample_judge if cfg.judge_scope == "per_sample" else judge
    if wanted is None and (judge or sample_judge) and cfg.judge:
        raise ValueError(f"judge_scope {cfg.judge_scope} needs a {'sample_judge' if judge else 'judge'}")
    if cfg.judge and candidates and wanted is not None:
        labels = np.array([-1 if ex.label is None else ex.label for ex in candidates])
        groups = _groups(emb, labels, cfg, seed)
        if sample_judge is not None and cfg.judge_scope == "per_sample":
            clusters = _judge_samples(groups, candidates, keep, sample_judge, cfg, stats)
        elif judge is not None:
            clusters = _judge_clusters(groups, emb, labels, candidates, keep, judge, cfg)
        stats["judged_out"] = int((~keep).sum())
    kept = [ex for ex, k in zip(candidates, keep, strict=True) if k]
    stats["kept"] = len(kept)
    return FilterResult(kept=kept, stats=stats, clusters=clusters)


def length_filter(examples: Sequence[Example], min_words: int) -> FilterResult:
    """The reference's filter of the LLM's augmented samples: texts of fewer than `min_words` words are
    dropped (counted as invalid), nothing else."""
    kept = [ex for ex in examples if len(ex.text.split()) >= min_words]
    stats = {**dict.fromkeys(STAGES, 0), "input": len(examples), "invalid": len(examples) - len(kept),
             "kept": len(kept)}
    return FilterResult(kept=kept, stats=stats)
