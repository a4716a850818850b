"""Token alignment across tokenizers (FedMKT): a vocabulary mapping by minimum edit distance, and a sequence
alignment of two tokenisations of the same text by dynamic programming over edit distance (character level).

- `token_texts(tokenizer)`: every vocabulary entry as the text it stands for, word-boundary markers (the
  byte-level `Ġ`/`Ċ`, SentencePiece `▁`, WordPiece `##`) and byte-fallback `<0xNN>` decoded. The leading
  space of a word-initial token is kept: `Ġgood` and `▁good` are both " good", and neither is the
  word-internal "good" (stripping it had mapped Qwen's " a" onto a Gemma "a" that never starts a word).
- `vocab_mapping(src, dst)`: each source token → the destination token with equal text, else the one with
  the minimum Levenshtein distance (rapidfuzz; candidates share the head — first character, or the space
  and the first character of a word-initial text — else all). Byte-fallback pieces are chosen last: a ':'
  maps to Gemma's ':' token, not to its `<0x3A>`. Cached on disk per tokenizer pair
  (`cached_vocab_mapping`).
- `position_map(a, b)`: for every position of `b`, the position of `a` whose next-token distribution
  predicts the same thing: the last token of each ending at the same point of the text (found by aligning
  the two whitespace-free texts character by character with Levenshtein opcodes); none inside a word the
  other side keeps whole, where no distribution of `a` predicts b's next piece.
- `transfer_topk`: a source model's top-k distributions carried to the destination positions and
  vocabulary (duplicates after mapping merged by log-sum-exp).
"""

from __future__ import annotations

import hashlib
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
        return bytes([int(m.group(1), 16)]).decode("latin-1")
    text = token[2:] if token.startswith("##") and len(token) > 2 else token
    return text.translate(_MARKS)


def is_byte_fallback(token: str) -> bool:
    """Whether a raw vocabulary token is a SentencePiece byte-fallback piece (`<0x3A>`)."""
    return _BYTE.match(token) is not None


# Per tokenizer object (a worker keeps its tokenizers for its life): decoding or sorting a 150k vocabulary
# costs seconds, and a pooled worker serves many clients. Keyed also by the vocabulary size (added tokens).
_TEXTS: weakref.WeakKeyDictionary[Any, tuple[int, list[str]]] = weakref.WeakKeyDictionary()
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def token_texts(tokenizer: Any) -> list[str]:
    """The text of every id in the tokenizer's vocabulary (added tokens included), indexed by id: the
    tokenizer's own decoding of the single token (byte-level and byte-fallback tokens decoded), a
    word-initial token with its leading space.
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
            text = tokenizer.convert_tokens_to_string([token])
        except Exception:  # a tokenizer that cannot decode a lone token: the marker rules
            text = token_text(token)
        if token[:1] in ("Ġ", "▁") and not text[:1].isspace():  # a decoder that drops a leading space
            text = " " + text
        out[idx] = text
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


def token_head(text: str) -> str:
    """The group a text's MinED candidates come from: its first character, or the space and the first
    character after it for a word-initial text (so " good" is searched among the word-initial " g…")."""
    return text[:2] if text[:1] == " " and len(text) > 1 else text[:1]


def vocab_mapping(src: Sequence[str], dst: Sequence[str], chunk: int = 512,
                  last: Sequence[int] = ()) -> VocabMapping:
    """MinED mapping of source token texts onto destination token texts.

    An equal text maps exactly; any other source text maps to the destination text at the least Levenshtein
    distance among those with the same head (`token_head`; all of them when none has it), the lowest id on ties.
    The destination ids in `last` (byte-fallback pieces) come after all others, for equal texts and ties
    alike. The distances are computed group by group with `rapidfuzz.process.cdist` (C++, all cores),
    `chunk` source texts at a time."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    late = set(last)
    order = [j for j in range(len(dst)) if j not in late] + sorted(late)
    index: dict[str, int] = {}
    by_head: dict[str, list[int]] = {}
    for j in order:
        text = dst[j]
        index.setdefault(text, j)
        if text:
            by_head.setdefault(token_head(text), []).append(j)
    ids = np.zeros(len(src), dtype=np.int64)
    exact = np.zeros(len(src), dtype=bool)
    pending: dict[str, list[int]] = {}  # head ("" = no group of its own) → inexact source ids
    for i, text in enumerate(src):
        hit = index.get(text)
        if hit is not None:
            ids[i], exact[i] = hit, True
        else:
            head = token_head(text)
            pending.setdefault(head if head in by_head else "", []).append(i)
    for head, queries in pending.items():
        pool = by_head[head] if head else order
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


_MAPPING_VERSION = "v2"  # bumped when the mapping rule changes, so an older cached mapping is not reused


def cached_vocab_mapping(src_tokenizer: Any, dst_tokenizer: Any, cache: Path | None = None) -> VocabMapping:
    """`vocab_mapping` of two tokenizers' vocabularies, computed once per pair and kept on disk."""
    if cache is None:
        from estuary.models import cache_dir

        cache = cache_dir() / "alignment"
    path = cache / f"{_MAPPING_VERSION}-{_fingerprint(src_tokenizer)}-{_fingerprint(dst_tokenizer)}.npz"
    if path.exists():
        data = np.load(path)
        return VocabMapping(data["ids"], data["exact"])
    fallback = [i for t, i in dst_tokenizer.get_vocab().items() if is_byte_fallback(t)]
    mapping = vocab_mapping(token_texts(src_tokenizer), token_texts(dst_tokenizer), last=fallback)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, ids=mapping.ids, exact=mapping.exact)
    tmp.replace(path)
    return mapping


_SPACE = re.compile(r"\s+")


def _ends(texts: Sequence[str]) -> tuple[str, list[int]]:
    """The texts joined without whitespace, and where each token ends in that string."""
    out, ends, n = [], [], 0
    for t in texts:
        piece = _SPACE.sub("", t)
        out.append(piece)
        n += len(piece)
        ends.append(n)
    return "".join(out), ends


def _offset_map(a: str, b: str) -> dict[int, int]:
    """Offsets of `a` that the character-level edit-distance alignment to `b` carries over (inside and at the
    edges of equal blocks): where a token of `a` ends there, a token of `b` may end at the same point."""
    if a == b:
        return {i: i for i in range(len(a) + 1)}
    from rapidfuzz.distance import Levenshtein

    out: dict[int, int] = {}
    for op in Levenshtein.opcodes(a, b):
        if op.tag == "equal":
            for i in range(op.src_start, op.src_end + 1):
                out[i] = op.dest_start + i - op.src_start
    return out


def position_map(a: Sequence[str], b: Sequence[str]) -> tuple[list[int], float]:
    """For every position j of `b`, the position of `a` whose next-token distribution predicts what b's does:
    both must be the last token ending at the same point of the text. Texts are compared without whitespace,
    aligned character by character by edit distance (so differing normalisation or byte-fallback pieces only
    lose the boundaries they touch). -1 where no `a` token ends there: inside a word that `a` keeps whole, or
    an empty text (a special token such as BOS). Coverage: the share of `b` positions taking an `a` position
    of equal text (the same token on both sides)."""
    sa, ends_a = _ends(a)
    sb, ends_b = _ends(b)
    carry = _offset_map(sa, sb)
    last_a: dict[int, int] = {}
    for i, (text, end) in enumerate(zip(a, ends_a, strict=True)):
        if text and end in carry:
            last_a[carry[end]] = i  # in order: the last token ending there wins
    last_b = {end: j for j, (text, end) in enumerate(zip(b, ends_b, strict=True)) if text}
    src = [-1] * len(b)
    for end, j in last_b.items():
        src[j] = last_a.get(end, -1)
    exact = sum(1 for j, i in enumerate(src) if i >= 0 and a[i] == b[j])
    return src, exact / len(b) if b else 0.0


def next_token_carry(src_tokenizer: Any, dst_tokenizer: Any, texts: Sequence[str],
                     mapping: VocabMapping) -> tuple[int, int]:
    """(hits, positions): over the destination positions that `position_map` pairs with a source position, how
    often the source's actual next token, through `mapping`, is the destination's actual next token. The
    check of a vocabulary mapping that matters for distillation: a target row put on the wrong token id
    teaches the wrong token."""
    src_texts, dst_texts = token_texts(src_tokenizer), token_texts(dst_tokenizer)
    hits = total = 0
    for text in texts:
        a = src_tokenizer(text, add_special_tokens=False).input_ids
        b = dst_tokenizer(text, add_special_tokens=False).input_ids
        pairs, _ = position_map([src_texts[i] for i in a], [dst_texts[i] for i in b])
        for j, i in enumerate(pairs):
            if 0 <= i < len(a) - 1 and j < len(b) - 1:
                total += 1
                hits += int(mapping.ids[a[i + 1]]) == b[j + 1]
    return hits, total


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
