"""A card's source rows → Examples, and the carve of missing eval/test splits from train.

Each example's uid is `<task>/<file stem or source split>/<row>`, `row` the 0-based row of that split, so a
uid names the same data point whatever the seed. Texts are stripped (and, with `clean: news`, unescaped); a
list of text columns is joined as sentences; a target gets a leading space (it follows the prompt). A value
the card cannot map (a label not in `labels`, an empty text) is one DataError naming the file and the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from estuary.errors import DataError

from .card import ROLES, TaskCard
from .parsers import clean_news
from .source import SourceSplit, full_match, missing_column
from .task import Example


@dataclass(frozen=True)
class Rows:
    """One source split as examples, with the raw values of the columns a carve keys on."""

    split: SourceSplit
    examples: list[Example]
    keys: dict[str, list[str]]  # column -> its values (stripped strings), for carve.stratify / carve.group


def _join(parts: Sequence[str]) -> str:
    """Title + body: ' ' after a part that ends a sentence (or is empty), else '. '."""
    text = parts[0]
    for part in parts[1:]:
        text = text + (" " if not text or text[-1] in ".!?" else ". ") + part
    return text.strip()


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


class _Mapper:
    def __init__(self, card: TaskCard, split: SourceSplit) -> None:
        self.card, self.split = card, split
        self.clean: Callable[[str], str] = clean_news if card.clean == "news" else str.strip
        self.keys = card.label_keys()
        self.index = {k: i for i, k in enumerate(self.keys)}

    def fail(self, row: int, what: str, fix: str) -> DataError:
        return DataError(f"{self.split.where}, row {row} ({self.uid(row)}): {what}; {fix}")

    def uid(self, row: int) -> str:
        return f"{self.card.name}/{self.split.stem}/{row}"

    def value(self, role: str, row: int, raw: Any) -> str:
        text = _as_text(raw)
        pattern = self.card.extract.get(role)  # type: ignore[call-overload]
        if pattern is not None:
            got = full_match(pattern, text.strip())
            if got is None:
                raise self.fail(row, f"{role} value {text[:60]!r} does not match data.task.extract.{role} "
                                f"{pattern!r}", "fix the pattern or that row")
            text = got
        return text

    def label(self, row: int, raw: Any) -> int:
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)  # an integer column read as float (pandas, when a cell was empty)
        value = self.value("label", row, raw).strip()
        if value in self.index:
            return self.index[value]
        listed = isinstance(self.card.labels, list)
        if listed and (isinstance(raw, int) or value.lstrip("-").isdigit()) and 0 <= int(value) < len(self.keys):
            return int(value)
        shown = ", ".join(self.keys) + (f", or an index 0..{len(self.keys) - 1}" if listed else "")
        raise self.fail(row, f"label value {value!r} is not in data.task.labels ({shown})",
                        "add it to labels or fix that row")

    def text(self, role: str, row: int, raws: Sequence[Any]) -> str:
        text = _join([self.clean(self.value(role, row, r)) for r in raws])
        if not text:
            cols = ", ".join(self.card.columns.names(role))
            raise self.fail(row, f"empty {role} (column {cols})", "fix or remove that row")
        return text


def _columns(card: TaskCard, split: SourceSplit, extra: Sequence[str]) -> dict[str, list[Any]]:
    have = list(split.rows.column_names)
    wanted: dict[str, str] = {}
    for role in ROLES:
        for col in card.columns.names(role):
            wanted[col] = f"columns.{role}"
    for col, field in zip(extra, ("carve.stratify", "carve.group"), strict=False):
        wanted.setdefault(col, field)
    for col, field in wanted.items():
        if col not in have:
            raise missing_column(have, col, field, split.where)
    return dict(split.rows.select_columns(list(wanted)).to_dict())  # plain lists: one read per column


def rows_of(card: TaskCard, split: SourceSplit) -> Rows:
    """The split's examples (and the values of the carve's key columns)."""
    key_cols = [c for c in (card.carve.stratify, card.carve.group) if c]
    cols = _columns(card, split, key_cols)
    m = _Mapper(card, split)
    c = card.columns
    texts = [cols[n] for n in c.names("text")]
    out: list[Example] = []
    for row in range(len(split.rows)):
        pair = m.text("text_pair", row, [cols[c.text_pair][row]]) if c.text_pair else None
        target = " " + m.text("target", row, [cols[c.target][row]]) if c.target else None
        domain = m.value("domain", row, cols[c.domain][row]).strip() if c.domain else None
        label = m.label(row, cols[c.label][row]) if c.label else None
        out.append(Example(text=m.text("text", row, [t[row] for t in texts]), label=label, text_pair=pair,
                           target=target, domain=domain, uid=m.uid(row)))
    keys = {col: [_as_text(v).strip() for v in cols[col]] for col in key_cols}
    return Rows(split, out, keys)


# ---------------------------------------------------------------------------------------------------
# Carving eval/test from train (deterministic from the seed)


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, sum(ord(c) * (i + 1) for i, c in enumerate(purpose))])


def allocate(counts: Sequence[int], total: int) -> list[int]:
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


def stratified_split(keys: Sequence[Any], fractions: Sequence[float], rng: np.random.Generator) -> list[list[int]]:
    """Partition positions ``0..len(keys)-1`` into ``len(fractions)`` parts, per key value (in sorted order)."""
    parts: list[list[int]] = [[] for _ in fractions]
    for key in sorted(set(keys)):
        idx = [i for i, y in enumerate(keys) if y == key]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        sizes = allocate([round(f * 1_000_000) for f in fractions], len(idx))
        start = 0
        for p, size in enumerate(sizes):
            parts[p].extend(idx[start : start + size])
            start += size
    return [sorted(p) for p in parts]


def _grouped_split(groups: Sequence[str], fractions: Sequence[float], rng: np.random.Generator) -> list[list[int]]:
    """Parts 1.. get round(fraction * #groups) (at least 1) whole groups each, drawn from the sorted groups."""
    names = sorted(set(groups))
    order = [names[j] for j in rng.permutation(len(names))]
    part_of: dict[str, int] = {}
    start = 0
    for p, frac in enumerate(fractions[1:], start=1):
        n = max(1, round(frac * len(names)))
        part_of.update(dict.fromkeys(order[start : start + n], p))
        start += n
    parts: list[list[int]] = [[] for _ in fractions]
    for i, g in enumerate(groups):
        parts[part_of.get(g, 0)].append(i)
    return parts


def carve(card: TaskCard, pool: Rows, missing: Sequence[str], seed: int) -> dict[str, list[Example]]:
    """train plus the `missing` splits (eval and/or test, in that order) carved from `pool`."""
    shares = [getattr(card.carve, s) for s in missing]
    fractions = [1.0 - sum(shares), *shares]
    rng = seeded_rng(seed, f"split/{card.carve.seed_name or card.name}")
    examples = pool.examples
    if card.carve.group:
        parts = _grouped_split(pool.keys[card.carve.group], fractions, rng)
    else:
        if card.carve.stratify:
            keys: Sequence[Any] = pool.keys[card.carve.stratify]
        elif card.kind == "classification":
            keys = [int(e.label or 0) for e in examples]
        else:
            keys = [0] * len(examples)
        parts = stratified_split(keys, fractions, rng)
    out = {"train": [examples[i] for i in parts[0]]}
    for name, part in zip(missing, parts[1:], strict=True):
        out[name] = [examples[i] for i in part]
    return out
