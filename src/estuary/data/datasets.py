"""Tasks and their train/eval/test splits, from task cards (built-in, a card file, or inline).

Every task goes through one path: the card names a source, `estuary.data.source` reads it with 🤗 `datasets`,
`estuary.data.loader` maps its columns to Examples and carves the splits the source lacks. The built-in cards
(`estuary/data/cards/*.yaml`) read the files in ``shared/data`` (see its README) and keep exactly the splits
and uids the earlier hand-written loaders made (tests/unit/test_builtin_regression.py): official splits where
they exist; AG News and Yelp (one file each) split 0.7/0.1/0.2 in code, stratified by label; RTE's eval and
E2E's eval (by meaning representation) carved from train. Each example's ``uid`` is
``"<task>/<source file stem or split>/<row>"``, so a uid names the same data point whatever the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from estuary.errors import DataError

from .card import TaskCard, builtin_card, builtin_names
from .loader import Rows, allocate, carve, rows_of, seeded_rng
from .source import ENV_VAR, SourceSplit, find_data_root, load_source

__all__ = ["ENV_VAR", "TASKS", "Splits", "find_data_root", "get_card", "get_task", "load_splits", "stratified_sample"]
from .task import Example, Task

_FIRST = ("sst2", "agnews", "rte", "yelp", "yelp-gen", "e2e")  # the order the built-ins were always listed in
TASKS: dict[str, Task] = {
    name: builtin_card(name).to_task()
    for name in sorted(builtin_names(), key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n))
}

TaskRef = str | TaskCard  # a built-in task name or a card


def get_card(ref: TaskRef) -> TaskCard:
    """The card of a built-in task name, or the card itself."""
    return ref if isinstance(ref, TaskCard) else builtin_card(ref)


def get_task(ref: TaskRef) -> Task:
    """The Task of a built-in name (the registered object) or of a card; DataError listing the known names."""
    if isinstance(ref, str):
        if ref in TASKS:
            return TASKS[ref]
        builtin_card(ref)  # raises the one-line error with the known names
    return get_card(ref).to_task()


@dataclass
class Splits:
    task: Task
    train: list[Example]
    eval: list[Example]
    test: list[Example]
    origin: str = ""  # the source read, and its format
    source_rows: dict[str, int] = field(default_factory=dict)  # source split -> rows (all of them, before carving)
    carved: tuple[str, ...] = ()  # splits carved from train

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "eval": len(self.eval), "test": len(self.test)}


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
    rng = seeded_rng(seed, purpose)
    if all(e.label is not None for e in examples):
        labels = [int(e.label) for e in examples if e.label is not None]
        classes = sorted(set(labels))
        alloc = allocate([labels.count(c) for c in classes], size)
        chosen: list[int] = []
        for c, k in zip(classes, alloc, strict=True):
            idx = [i for i, y in enumerate(labels) if y == c]
            chosen.extend(idx[j] for j in rng.permutation(len(idx))[:k])
    else:
        chosen = [int(j) for j in rng.permutation(len(examples))[:size]]
    return [examples[i] for i in sorted(chosen)]


_ROWS: dict[tuple[str, str, str], Rows] = {}


def _rows(card: TaskCard, split: SourceSplit) -> Rows:
    """`rows_of`, cached per process on the card and the split's data (its `datasets` fingerprint)."""
    key = (card.model_dump_json(), split.where, str(split.rows._fingerprint))
    if key not in _ROWS:
        if len(_ROWS) >= 32:
            _ROWS.pop(next(iter(_ROWS)))
        _ROWS[key] = rows_of(card, split)
    return _ROWS[key]


def load_splits(
    task: TaskRef,
    *,
    root: Path | None = None,
    seed: int = 0,
    train_size: int | None = None,
    eval_size: int | None = None,
    test_size: int | None = None,
) -> Splits:
    """Train/eval/test examples of a task (a built-in name or a card), deterministic from ``seed``.

    ``root`` is the data root relative source paths are read under (default: `find_data_root()`, looked up
    only when needed). ``*_size`` subsample a split after splitting (stratified by label for classification);
    each split keeps source order.
    """
    card = get_card(task)
    spec = get_task(task)
    data_root = find_data_root(root) if root is not None else None
    source = load_source(card, data_root)
    rows = {role: _rows(card, split) for role, split in source.splits.items()}
    missing = [s for s in ("eval", "test") if s not in rows]
    parts = carve(card, rows["train"], missing, seed) if missing else {"train": list(rows["train"].examples)}
    parts.update({s: list(r.examples) for s, r in rows.items() if s != "train"})  # copies: rows are cached
    return Splits(
        task=spec,
        train=_subsample(parts["train"], train_size, "train_size", spec, seed),
        eval=_subsample(parts["eval"], eval_size, "eval_size", spec, seed),
        test=_subsample(parts["test"], test_size, "test_size", spec, seed),
        origin=source.origin,
        source_rows={s.name: len(s.rows) for s in source.splits.values()},
        carved=tuple(missing),
    )


def load_job_splits(task: TaskRef, root: Path | None, seed: int, train_size: int | None,
                    test_size: int | None) -> Splits:
    """The splits a run uses: `train_size` examples of train (an error if it has fewer), at most `test_size`
    of test (data.test_size's default, 200, is a cap: a small data set keeps all its test examples)."""
    splits = load_splits(task, root=root, seed=seed, train_size=train_size)
    if test_size is not None:
        purpose = f"subsample/{splits.task.name}/test_size"  # as load_splits(test_size=...) draws it
        splits.test = stratified_sample(splits.test, test_size, seed=seed, purpose=purpose)
    return splits
