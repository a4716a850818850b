"""Token alignment across tokenizers (FedMKT): a vocabulary mapping by minimum edit distance, and a sequence
alignment of two tokenisations of the same text by dynamic programming over edit distance.

- `token_texts(tokenizer)`: every vocabulary entry as the text it stands for, word-boundary markers (the
  byte-level `Ġ`/`Ċ`, SentencePiece `▁`, WordPiece `##`) and byte-fallback `<0xNN>` decoded, surrounding
  space stripped (a whitespace-only token keeps its whitespace).
- `vocab_mapping(src, dst)`: each source token → the destination token with equal text, else the one with
  the minimum Levenshtein distance (rapidfuzz; candidates share the first character, else all). Cached on
  disk per tokenizer pair (`cached_vocab_mapping`).
- `align_sequences(a, b)`: DTW over the two token-text sequences; `position_map` gives, for every position
  of `b`, the position of `a` whose next-token distribution predicts the same thing (the last `a` token
  aligned to it).
- `transfer_topk`: a source model's top-k distributions carried to the destination positions and
  vocabulary (duplicates after mapping merged by log-sum-exp).
"""

from __future__ import annotations

import hashlib
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_MARKS = str.maketrans({"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "▁": " "})


def token_text(token: str) -> str:
    """The text a raw vocabulary token stands for (see the module doc)."""
    m = _BYTE.match(token)
    if m:
        text = bytes([int(m.group(1), 16)]).decode("latin-1")
    else:
        text = token[2:] if token.startswith("##") and len(token) > 2 else token
        text = text.translate(_MARKS)
    return _strip(text)


def _strip(text: str) -> str:
    stripped = text.strip()
    return stripped if stripped else text


# Per tokenizer object (a worker keeps its tokenizers for its life): decoding or sorting a 150k vocabulary
# costs seconds, and a pooled worker serves many clients. Keyed also by the vocabulary size (added tokens).
_TEXTS: weakref.WeakKeyDictionary[Any, tuple[int, list[str]]] = weakref.WeakKeyDictionary()
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any) -> list[str]:
    """The text of every id in the tokenizer's vocabulary (added tokens included), indexed by id: the
    tokenizer's own decoding of the single token (byte-level and byte-fallback tokens decoded), stripped.
    Computed once per tokenizer object (callers must not mutate the list)."""
    size = len(tokenizer)
    hit = _TEXTS.get(tokenizer)
    if hit is not None and hit[0] == size:
        return hit[1]
    out = _token_texts(tokenizer)
    _TEXTS[tokenizer] = (size, out)
    return out


def _token_texts(tokenizer: Any) -> list[str]:
    vocab = tokenizer.get_vocab()
    out = [""] * (max(vocab.values()) + 1)
    for token, idx in vocab.items():
        try:
            out[idx] = _strip(tokenizer.convert_tokens_to_string([token]))
        except Exception:  # a tokenizer that cannot decode a lone token: the marker rules
            out[idx] = token_text(token)
    for idx in tokenizer.all_special_ids:  # BOS, EOS, PAD ...: no text, left out of sequence alignment
        out[idx] = ""
    return out


@dataclass(frozen=True)
class VocabMapping:
    ids: np.ndarray  # [src vocab] destination id of each source id
    exact: np.ndarray  # [src vocab] bool: the texts are equal

    @property
    def exact_share(self) -> float:
        return float(self.exact.mean()) if len(self.exact) else 0.0


def vocab_mapping(src: Sequence[str], dst: Sequence[str], chunk: int = 512) -> VocabMapping:
    """MinED mapping of source token texts onto destination token texts.

    An equal text maps exactly; any other source text maps to the destination text at the least Levenshtein
    distance among those with the same first character (all of them when none has it), the lowest id on ties.
    The distances are computed group by group with `rapidfuzz.process.cdist` (C++, all cores), `chunk` source
    texts at a time."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    index: dict[str, int] = {}
    by_first: dict[str, list[int]] = {}
    for j, text in enumerate(dst):
        index.setdefault(text, j)
        if text:
            by_first.setdefault(text[0], []).append(j)
    ids = np.zeros(len(src), dtype=np.int64)
    exact = np.zeros(len(src), dtype=bool)
    pending: dict[str, list[int]] = {}  # first character ("" = no group of its own) → inexact source ids
    for i, text in enumerate(src):
        hit = index.get(text)
        if hit is not None:
            ids[i], exact[i] = hit, True
        else:
            pending.setdefault(text[:1] if text[:1] in by_first else "", []).append(i)
    for first, queries in pending.items():
        pool = by_first[first] if first else list(range(len(dst)))
        choices = [dst[k] for k in pool]
        for at in range(0, len(queries), chunk):
            part = queries[at:at + chunk]
            dist = process.cdist([src[i] for i in part], choices, scorer=Levenshtein.distance, dtype=np.int32,
                                 workers=-1)
            ids[part] = np.asarray(pool, dtype=np.int64)[dist.argmin(axis=1)]
    return VocabMapping(ids, exact)


def _fingerprint(tokenizer: Any) -> str:
    size = len(tokenizer)
    hit = _FINGERPRINTS.get(tokenizer)
    if hit is not None and hit[0] == size:
        return hit[1]
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\x00".join(t for t, _ in vocab).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    _FINGERPRINTS[tokenizer] = (size, digest)
    return digest


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers have the same vocabulary (the same token at every id)."""
    return a is b or _fingerprint(a) == _fingerprint(b)


def cached_vocab_mapping(src_tokenizer: Any, dst_tokenizer: Any, cache: Path | None = None) -> VocabMapping:
    """`vocab_mapping` of two tokenizers' vocabularies, computed once per pair and kept on disk."""
    if cache is None:
        from estuary.models import cache_dir

        cache = cache_dir() / "alignment"
    path = cache / f"{_fingerprint(src_tokenizer)}-{_fingerprint(dst_tokenizer)}.npz"
    if path.exists():
        data = np.load(path)
        return VocabMapping(data["ids"], data["exact"])
    mapping = vocab_mapping(token_texts(src_tokenizer), token_texts(dst_tokenizer))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, ids=mapping.ids, exact=mapping.exact)
    tmp.replace(path)
    return mapping


def align_sequences(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """DTW path of (i, j) pairs aligning token texts `a` to `b`: cost 0 for equal texts, else their
    Levenshtein distance over the longer length; steps (1,1), (1,0), (0,1); starts at (0,0), ends at the ends."""
    from rapidfuzz.distance import Levenshtein

    n, m = len(a), len(b)
    if not n or not m:
        return []
    cost = np.array([[Levenshtein.normalized_distance(x, y) for y in b] for x in a], dtype=np.float64)
    acc = np.full((n + 1, m + 1), math.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row, prev = acc[i], acc[i - 1]
        for j in range(1, m + 1):
            row[j] = cost[i - 1, j - 1] + min(prev[j - 1], prev[j], row[j - 1])
    path = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        steps = (acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
        k = int(np.argmin(steps))
        i, j = (i - 1, j - 1) if k == 0 else (i - 1, j) if k == 1 else (i, j - 1)
    return path[::-1]


def position_map(a: Sequence[str], b: Sequence[str]) -> tuple[list[int], float]:
    """For every position j of `b`, the position of `a` to take its distribution from (the last `a`
    position aligned to j; -1 for an empty text, e.g. a special token such as BOS, which is left out of the
    alignment); and the coverage: the share of `b` positions aligned one-to-one to an equal text."""
    ka = [i for i, t in enumerate(a) if t]
    kb = [j for j, t in enumerate(b) if t]
    path = align_sequences([a[i] for i in ka], [b[j] for j in kb])
    src = [-1] * len(b)
    count_a = dict.fromkeys(ka, 0)
    count_b = dict.fromkeys(kb, 0)
    for i, j in ((ka[x], kb[y]) for x, y in path):
        src[j] = i  # the path is in order: the last pair for j wins
        count_a[i] += 1
        count_b[j] += 1
    exact = sum(1 for j in kb if src[j] >= 0 and count_b[j] == 1 and count_a[src[j]] == 1 and a[src[j]] == b[j])
    return src, exact / len(b) if b else 0.0


def transfer_topk(ids: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]], positions: Sequence[int],
                  mapping: np.ndarray) -> tuple[list[list[int]], list[list[float]]]:
    """Top-k rows of a source model re-indexed to destination positions (`positions[j]` = source position,
    -1 = none: an empty row) and vocabulary (`mapping[src id]` = dst id; equal targets merged)."""
    out_ids: list[list[int]] = []
    out_lps: list[list[float]] = []
    for i in positions:
        if i < 0 or i >= len(ids):
            out_ids.append([])
            out_lps.append([])
            continue
        merged: dict[int, float] = {}
        for tok, lp in zip(ids[i], logprobs[i], strict=True):
            d = int(mapping[tok])
            merged[d] = float(np.logaddexp(merged[d], lp)) if d in merged else float(lp)
        order = sorted(merged, key=lambda t: -merged[t])
        out_ids.append(order)
        out_lps.append([merged[t] for t in order])
    return out_ids, out_lps
