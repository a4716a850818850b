"""Task definitions and loaders for the data sets in ``shared/data`` (see its README).

Every loader is deterministic from a seed. Official splits are used where they exist; where only
one file exists (AG News, Yelp) it is split in code, stratified by label. Each example's ``uid`` is
``"<task>/<source file stem>/<row>"`` with ``row`` the 0-based data row of the source file, so a
uid names the same data point whatever the seed (e.g. ``"agnews/test/17"`` may land in ``train``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from estuary.errors import DataError

from .parsers import Row, parse_file
from .task import Example, Task

ENV_VAR = "ESTUARY_DATA"


TASKS: dict[str, Task] = {
    "sst2": Task(
        name="sst2",
        kind="classification",
        template="Review: {text}\nSentiment:",
        label_words=(" negative", " positive"),
        label_names=("negative", "positive"),
        description="Classify the sentiment of a one-sentence movie review as negative or positive.",
        extra={"subject": "a one-sentence movie review"},
    ),
    "agnews": Task(
        name="agnews",
        kind="classification",
        template="Article: {text}\nTopic:",
        label_words=(" World", " Sports", " Business", " Technology"),
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        description=(
            "Classify the topic of a news article headline and summary as World, Sports, "
            "Business or Science/Technology."
        ),
        extra={"subject": "a news article headline and summary"},
    ),
    "rte": Task(
        name="rte",
        kind="classification",
        template="{text}\nQuestion: {text_pair} Yes or no?\nAnswer:",
        label_words=(" yes", " no"),
        label_names=("entailment", "not_entailment"),
        description="Decide whether a premise passage entails a hypothesis sentence (yes or no).",
    ),
    "yelp": Task(
        name="yelp",
        kind="classification",
        template="Review: {text}\nOverall, it was",
        label_words=(" terrible", " bad", " okay", " good", " great"),
        label_names=("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
        description="Predict the star rating (1 to 5) a Yelp user gave a business from the review text.",
        extra={"subject": "a Yelp review of a business"},
    ),
    "yelp-gen": Task(
        name="yelp-gen",
        kind="generation",
        template="{text}",
        description="Write a realistic Yelp review of a business in a given business category.",
        extra={"conditional_template": "Business Category: {domain}\nReview:",
               "subject": "a Yelp review of a business"},
    ),
    "e2e": Task(
        name="e2e",
        kind="generation",
        template="Restaurant attributes: {text}\nDescription:",
        description=(
            "Write a one- or two-sentence restaurant description that expresses every "
            "attribute of a meaning representation."
        ),
        # public, hand-written (not from the data): E2E's attribute schema, which a DP teacher writes its samples
        # in, and the prefix every meaning representation starts with (an ε = 2 teacher never found the form on
        # its own; a concrete example line in the prompt was copied by the teachers instead of learnt from)
        extra={"subject": "a restaurant's attributes, each as key[value] (name, eatType, food, priceRange, "
                          "customer rating, area, familyFriendly, near), then a one-sentence description of it",
               "prefix": "name["},
    ),
}

# Fractions (train, eval, test) for data sets with a single source file.
SINGLE_FILE_FRACTIONS = (0.7, 0.1, 0.2)
RTE_EVAL_FRACTION = 0.1  # carved from rte/train.jsonl, stratified
E2E_EVAL_FRACTION = 0.1  # of the meaning representations in e2e/devset.csv


def get_task(name: str) -> Task:
    """The registered task called ``name``; DataError listing the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        known = ", ".join(sorted(TASKS))
        raise DataError(f"unknown task {name!r} (data.task); use one of: {known}") from None


@dataclass
class Splits:
    task: Task
    train: list[Example]
    eval: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "eval": len(self.eval), "test": len(self.test)}


def find_data_root(explicit: str | Path | None = None) -> Path:
    """Folder holding the data sets: ``explicit``, else ``$ESTUARY_DATA``, else a ``shared/data``
    folder beside an ancestor of the working directory or of this source file."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataError(f"data.root {str(path)!r} is not a folder; point it at the shared data folder")
        return path.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(
                f"{ENV_VAR}={env!r} is not a folder; point it at the shared data folder or unset it"
            )
        return path.resolve()
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for ancestor in (start, *start.parents):
            candidate = ancestor / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DataError(
        f"no shared/data folder found above {starts[0]} or {starts[1]}; "
        f"set data.root or {ENV_VAR} to the data folder"
    )


Three = tuple[list[Example], list[Example], list[Example]]  # train, eval, test


def _rows(root: Path, rel: str, fmt: str) -> tuple[Row, ...]:
    path = root / rel
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise DataError(
            f"data file {path} not found; set data.root or {ENV_VAR} to the folder holding {rel}"
        ) from None
    return parse_file(str(path), mtime, fmt)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(ord(c) * (i + 1) for i, c in enumerate(purpose))])


def _allocate(counts: Sequence[int], total: int) -> list[int]:
    """Split ``total`` over groups proportionally to ``counts`` (largest remainder), capped at counts."""
    n = sum(counts)
    if n == 0:
        return [0 for _ in counts]
    raw = [c * total / n for c in counts]
    alloc = [min(int(r), c) for r, c in zip(raw, counts, strict=True)]
    order = sorted(range(len(counts)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    k = 0
    while sum(alloc) < total:
        i = order[k % len(order)]
        if alloc[i] < counts[i]:
            alloc[i] += 1
        k += 1
    return alloc


def _stratified_split(
    labels: Sequence[int], fractions: Sequence[float], rng: np.random.Generator
) -> list[list[int]]:
    """Partition positions ``0..len(labels)-1`` into ``len(fractions)`` parts, per label."""
    parts: list[list[int]] = [[] for _ in fractions]
    for lab in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == lab]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        sizes = _allocate([round(f * 1_000_000) for f in fractions], len(idx))
        start = 0
        for p, size in enumerate(sizes):
            parts[p].extend(idx[start : start + size])
            start += size
    return [sorted(p) for p in parts]


def _subsample(
    examples: list[Example], size: int | None, setting: str, task: Task, seed: int
) -> list[Example]:
    if size is None:
        return examples
    if size < 0 or size > len(examples):
        raise DataError(
            f"data.{setting}={size} but task {task.name} has {len(examples)} examples in that split; "
            f"use 0..{len(examples)} or leave it unset"
        )
    return stratified_sample(examples, size, seed=seed, purpose=f"subsample/{task.name}/{setting}")


def stratified_sample(examples: Sequence[Example], size: int, *, seed: int, purpose: str) -> list[Example]:
    """``size`` examples (all if fewer), label proportions kept when labelled; source order kept.
    Deterministic in (seed, purpose)."""
    if size >= len(examples):
        return list(examples)
    rng = _rng(seed, purpose)
    if all(e.label is not None for e in examples):
        labels = [int(e.label) for e in examples if e.label is not None]
        classes = sorted(set(labels))
        alloc = _allocate([labels.count(c) for c in classes], size)
        chosen: list[int] = []
        for c, k in zip(classes, alloc, strict=True):
            idx = [i for i, y in enumerate(labels) if y == c]
            chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    else:
        chosen = [int(j) for j in rng.permutation(len(examples))[:size]]
    return [examples[i] for i in sorted(chosen)]


def _pick(examples: list[Example], parts: list[list[int]]) -> Three:
    train, evals, test = ([examples[i] for i in p] for p in parts)
    return train, evals, test


def _cls(task: str, stem: str, rows: Sequence[Row]) -> list[Example]:
    return [Example(text=r[2], label=int(r[1]), uid=f"{task}/{stem}/{r[0]}") for r in rows]


def _load_sst2(root: Path, seed: int) -> Three:
    del seed  # official splits
    train, dev, test = (
        _cls("sst2", s, _rows(root, f"sst2/{s}.txt", "sst2")) for s in ("train", "dev", "test")
    )
    return train, dev, test


def _load_agnews(root: Path, seed: int) -> Three:
    examples = _cls("agnews", "test", _rows(root, "agnews/test.csv", "agnews"))
    labels = [int(e.label or 0) for e in examples]
    parts = _stratified_split(labels, SINGLE_FILE_FRACTIONS, _rng(seed, "split/agnews"))
    return _pick(examples, parts)


def _load_rte(root: Path, seed: int) -> Three:
    def build(stem: str) -> list[Example]:
        rows = _rows(root, f"rte/{stem}.jsonl", "rte")
        return [Example(text=r[2], text_pair=r[3], label=int(r[1]), uid=f"rte/{stem}/{r[0]}") for r in rows]

    pool, test = build("train"), build("val")
    labels = [int(e.label or 0) for e in pool]
    tr, ev = _stratified_split(labels, (1 - RTE_EVAL_FRACTION, RTE_EVAL_FRACTION), _rng(seed, "split/rte"))
    return [pool[i] for i in tr], [pool[i] for i in ev], test


def _load_yelp(root: Path, seed: int, *, generation: bool) -> Three:
    rows = _rows(root, "yelp/dev.csv", "yelp")
    name = "yelp-gen" if generation else "yelp"
    examples = [
        Example(text=r[2], label=None if generation else int(r[1]), domain=r[3], uid=f"{name}/dev/{r[0]}")
        for r in rows
    ]
    # Both tasks split on the star rating with the same generator: same seed, same rows per split.
    parts = _stratified_split([int(r[1]) for r in rows], SINGLE_FILE_FRACTIONS, _rng(seed, "split/yelp"))
    return _pick(examples, parts)


def _load_e2e(root: Path, seed: int) -> Three:
    def build(stem: str) -> list[Example]:
        rows = _rows(root, f"e2e/{stem}.csv", "e2e")
        return [Example(text=r[1], target=" " + r[2], uid=f"e2e/{stem}/{r[0]}") for r in rows]

    pool, test = build("devset"), build("testset_w_refs")
    mrs = sorted({e.text for e in pool})
    n_eval = max(1, round(E2E_EVAL_FRACTION * len(mrs)))
    eval_mrs = {mrs[j] for j in _rng(seed, "split/e2e").permutation(len(mrs))[:n_eval]}
    train = [e for e in pool if e.text not in eval_mrs]
    evals = [e for e in pool if e.text in eval_mrs]
    return train, evals, test


_LOADERS: dict[str, Callable[[Path, int], Three]] = {
    "sst2": _load_sst2,
    "agnews": _load_agnews,
    "rte": _load_rte,
    "yelp": functools.partial(_load_yelp, generation=False),
    "yelp-gen": functools.partial(_load_yelp, generation=True),
    "e2e": _load_e2e,
}


def load_splits(
    task_name: str,
    *,
    root: Path | None = None,
    seed: int = 0,
    train_size: int | None = None,
    eval_size: int | None = None,
    test_size: int | None = None,
) -> Splits:
    """Train/eval/test examples of ``task_name``, deterministic from ``seed``.

    ``*_size`` subsample a split after splitting (stratified by label for classification);
    each split keeps source-file order.
    """
    task = get_task(task_name)
    data_root = find_data_root(root)
    train, evals, test = _LOADERS[task.name](data_root, seed)
    return Splits(
        task=task,
        train=_subsample(train, train_size, "train_size", task, seed),
        eval=_subsample(evals, eval_size, "eval_size", task, seed),
        test=_subsample(test, test_size, "test_size", task, seed),
    )
