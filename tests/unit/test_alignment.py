"""FedMKT token alignment (MinED vocabulary mapping, DTW sequence alignment) and teacher selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from estuary.knowledge.alignment import (
    cached_vocab_mapping,
    position_map,
    token_text,
    transfer_topk,
    vocab_mapping,
)
from estuary.knowledge.selection import cross_entropy, teacher_weights


def test_token_text_markers_and_byte_fallback() -> None:
    assert token_text("Ġhello") == " hello" and token_text("▁the") == " the" and token_text("##ing") == "ing"
    assert token_text("hello") == "hello" and token_text("Ġ.Ċ") == " .\n"  # word-initial or not stays apparent
    assert token_text("<0x0A>") == "\n" and token_text("<0x41>") == "A"
    assert token_text("Ġ") == " " and token_text("Ċ") == "\n" and token_text("##") == "##"


def test_vocab_mapping_exact_then_min_edit_distance() -> None:
    src = ["hello", "wrld", "movie", "moive", "zzz", ""]
    dst = ["hello", "world", "movie", "film", "zzzz", ""]
    m = vocab_mapping(src, dst)
    assert m.ids.tolist() == [0, 1, 2, 2, 4, 5]
    assert m.exact.tolist() == [True, False, True, False, False, True]
    assert m.exact_share == pytest.approx(3 / 6)


def test_vocab_mapping_groups_ties_and_chunks() -> None:
    """Inexact texts search the destination texts sharing their first character (all of them when none does),
    the lowest id wins a tie, and the result does not depend on how many source texts go to cdist at once."""
    dst = ["cab", "cat", "dog", "ca", "éclair", "x"]
    src = ["cap", "caa", "dot", "ébène", "qq", "c", "catalog"]
    m = vocab_mapping(src, dst)
    # cap, caa: cab, cat and ca all at 1 → cab (lowest id); dot → dog; ébène → éclair, the only é text although
    # every text is at 5; qq has no group → all texts, ca and x at 2 → ca; c → ca (1); catalog → cat (4)
    assert m.ids.tolist() == [0, 0, 2, 4, 3, 3, 1]
    assert not m.exact.any()
    assert vocab_mapping(src, dst, chunk=1).ids.tolist() == m.ids.tolist()


def test_vocab_mapping_keeps_word_starts_apart_and_byte_fallback_last() -> None:
    """A word-initial text maps to a word-initial one and a word-internal text to a word-internal one, even
    where the other kind has a lower id; a byte-fallback piece is taken only when nothing else fits."""
    dst = ["a", " a", "<0x3A>", ":", " good", "good", " go", "<0x7A>"]
    texts = [t if not t.startswith("<0x") else chr(int(t[3:5], 16)) for t in dst]  # what token_texts gives
    src = [" a", "a", ":", " goods", "goody", " g", "z"]
    m = vocab_mapping(src, texts, last=[2, 7])
    # " goods" → " good" (1; word-initial group); "goody" → "good"; " g" → " go" (1, not " a"); "z": no
    # word-internal z but its byte piece — the only text of its group — so it still maps there
    assert m.ids.tolist() == [1, 0, 3, 4, 5, 6, 7]
    assert m.exact.tolist() == [True, True, True, False, False, False, True]
    assert vocab_mapping(src, texts).ids.tolist()[2] == 2  # without `last`, the lower id wins the tie


def test_sequence_alignment_identical_finer_coarser_unmatched() -> None:
    same = ["the", "cat", "sat"]
    assert position_map(same, same) == ([0, 1, 2], 1.0)
    finer = ["un", "believ", "able", "film"]
    coarse = ["unbelievable", "film"]
    # b coarser: its position takes the distribution after the last a-token of the span
    assert position_map(finer, coarse) == ([2, 3], 0.5)
    # b finer: only the span's last piece predicts what a's token does; the others predict the word's rest
    assert position_map(coarse, finer) == ([-1, -1, 0, 1], 0.25)
    assert position_map(["lame", "as"], ["l", "ame", "as"]) == ([-1, 0, 1], pytest.approx(1 / 3))
    # whitespace-only tokens end where the token before them does: the last of each side ending there pairs
    assert position_map([".", "Sent", "iment", ":"], [".", "\n", "Sentiment", ":"]) == ([-1, 0, 2, 3], 0.25)
    # byte-fallback pieces (here two latin-1 characters for one 'é') lose only the boundaries they touch
    assert position_map(["caf", "é", "!"], ["cafÃ", "©", "!"]) == ([-1, 1, 2], pytest.approx(1 / 3))
    src, cov = position_map(["the", "cat", "sat", "down"], ["the", "dog", "sat"])
    assert src[0] == 0 and src[2] in (2, 3) and cov == pytest.approx(1 / 3 if src[2] == 3 else 2 / 3)
    assert position_map(["the", "dog", "sat"], ["the", "cat", "sat"]) == ([0, 1, 2], pytest.approx(2 / 3))
    # special tokens (empty text) are left out of the alignment
    assert position_map(["the", "cat"], ["", "the", "cat"]) == ([-1, 0, 1], pytest.approx(2 / 3))
    assert position_map([], ["x"]) == ([-1], 0.0)


def test_transfer_topk_maps_and_merges() -> None:
    mapping = np.array([0, 1, 1, 2])  # source ids 1 and 2 both map to destination id 1
    ids, lps = transfer_topk([[1, 2, 3], [0, 3, 1]], [[-0.5, -1.5, -2.0], [-0.1, -3.0, -4.0]], [1, -1, 0], mapping)
    assert ids == [[0, 2, 1], [], [1, 2]]
    assert lps[0] == [-0.1, -3.0, -4.0] and lps[1] == []
    assert lps[2][0] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-1.5))) and lps[2][1] == -2.0


def test_cached_mapping_of_real_tokenizers(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = cached_vocab_mapping(tok, tok, cache=tmp_path)
    special = set(tok.all_special_ids)
    plain = [i for i in range(len(first.ids)) if i not in special]
    assert first.exact.all() and (first.ids[plain] == plain).all()
    assert {int(first.ids[i]) for i in special} == {min(special)}  # specials have no text: one target
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = cached_vocab_mapping(tok, tok, cache=tmp_path)
    assert (again.ids == first.ids).all()


def test_teacher_selection() -> None:
    assert cross_entropy([None, -1.0, -3.0]) == 2.0 and cross_entropy([None]) == math.inf
    w = teacher_weights({"self": 2.0, "llm": 1.0, "c1": 3.0})
    assert w == {"self": 0.0, "llm": 1.0, "c1": 0.0}
    assert teacher_weights({"self": 1.0, "llm": 1.0}) == {"self": 1.0, "llm": 0.0}  # tie: itself
    wm = teacher_weights({"a": 0.0, "b": math.log(2)}, "weighted_mean")  # rewards 1 and 0.5
    assert wm["a"] == pytest.approx(math.exp(1) / (math.exp(1) + math.exp(0.5)))
    assert sum(wm.values()) == pytest.approx(1.0)
    assert teacher_weights({"a": math.inf, "b": 5.0}) == {"a": 0.0, "b": 1.0}
    with pytest.raises(ValueError, match="no candidate"):
        teacher_weights({})


def test_token_texts_and_fingerprint_computed_once_per_tokenizer(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from estuary.knowledge.alignment import _fingerprint, same_vocabulary, token_texts

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    first = token_texts(tok)
    assert token_texts(tok) is first and len(first) == len(tok)
    assert _fingerprint(tok) == _fingerprint(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    tok.add_tokens(["zzqx"])  # a changed vocabulary is read again
    assert token_texts(tok) is not first and token_texts(tok)[-1] == "zzqx"
    assert not same_vocabulary(tok, AutoTokenizer.from_pretrained(str(tiny_model_dir)))
