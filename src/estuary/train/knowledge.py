"""Aggregated client knowledge as the trainer takes it: records, a Ray Dataset of them, and batches.

A record is one of two kinds; one data set may mix them.

- **SFT example** (synthetic data the clients selected): `{"prompt": str, "completion": str}` trains on the
  completion's tokens; `{"text": str}` on every token; `{"input_ids": [int]}` on already-tokenised text.
- **Distillation example**: `{"input_ids": [int], "topk_ids": [[int]], "topk_logprobs": [[float]]}` is a
  text in the server LLM's tokenisation and, at every position t, the clients' aggregated distribution of
  the token after t as top-k ids already mapped to the LLM's vocabulary with their log-probabilities
  (the same layout as `ServerLLM.topk_logprobs`; an empty list = no target at that position). Its tokens
  also carry the SFT term of the mix (FedMKT's language-model loss) unless `"sft": false`; with
  `"sft_from": n` only tokens n onwards do (a prompt's tokens are context, its completion the ground truth).

Knowledge arrives as a `ray.data.Dataset`, a list of records, or object refs to lists of records (the
round's outputs, never files copied by hand); `as_dataset` makes one Dataset of them, and each training
worker reads its own shard of it. `collate` turns a worker's rows into padded tensors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from estuary.errors import DataError
from estuary.lm.objective import IGNORE

FIELDS = ("prompt", "completion", "text", "input_ids", "topk_ids", "topk_logprobs", "sft", "sft_from")
_PROB_SLACK = 1e-3  # top-k probabilities may sum to a little over 1 (rounding in the clients' aggregation)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def normalize_record(record: Any, where: str = "record") -> dict[str, Any]:
    """The record with every field present (None where absent), checked; DataError names what is wrong."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: a knowledge record is a mapping, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; a record has {', '.join(FIELDS)}")
    rec = {k: record.get(k) for k in FIELDS}
    has_topk = rec["topk_ids"] is not None or rec["topk_logprobs"] is not None
    if rec["input_ids"] is not None:
        ids = rec["input_ids"] = [int(x) for x in rec["input_ids"]] if _is_int_list(rec["input_ids"]) else None
        if not ids or any(x < 0 for x in ids):
            raise DataError(f"{where}: input_ids must be a non-empty list of token ids >= 0")
        if rec["prompt"] is not None or rec["text"] is not None:
            raise DataError(f"{where}: give input_ids or text/prompt, not both")
    elif has_topk:
        raise DataError(f"{where}: a distillation record needs input_ids (the text in the LLM's tokenisation) "
                        "to line its top-k distributions up with")
    elif rec["prompt"] is not None or rec["completion"] is not None:
        if not isinstance(rec["prompt"], str) or not isinstance(rec["completion"], str) or not rec["completion"]:
            raise DataError(f"{where}: an SFT example needs a string prompt and a non-empty string completion")
        if rec["text"] is not None:
            raise DataError(f"{where}: give text or prompt/completion, not both")
    elif not isinstance(rec["text"], str) or not rec["text"]:
        raise DataError(f"{where}: empty record; give prompt+completion, text, or input_ids (+ topk_ids, "
                        "topk_logprobs)")
    if has_topk:
        _check_topk(rec, where)
    if rec["sft"] is not None and not isinstance(rec["sft"], bool):
        raise DataError(f"{where}: sft must be true or false, got {rec['sft']!r}")
    if rec["sft_from"] is not None:
        n = len(rec["input_ids"] or [])
        if not n or isinstance(rec["sft_from"], bool) or not isinstance(rec["sft_from"], int) \
                or not 0 <= rec["sft_from"] < n:
            raise DataError(f"{where}: sft_from must be a token index of input_ids (0 to {n - 1}), "
                            f"got {rec['sft_from']!r}")
    return rec


def _check_topk(rec: dict[str, Any], where: str) -> None:
    ids, lps = rec["topk_ids"], rec["topk_logprobs"]
    n = len(rec["input_ids"])
    if not isinstance(ids, list | tuple) or not isinstance(lps, list | tuple) or len(ids) != n or len(lps) != n:
        raise DataError(f"{where}: topk_ids and topk_logprobs need one entry per input token ({n})")
    rec["topk_ids"], rec["topk_logprobs"] = [list(map(int, r)) for r in ids], [list(map(float, r)) for r in lps]
    for t, (row_ids, row_lps) in enumerate(zip(rec["topk_ids"], rec["topk_logprobs"], strict=True)):
        if len(row_ids) != len(row_lps):
            raise DataError(f"{where}: position {t} has {len(row_ids)} top-k ids but {len(row_lps)} log-probabilities")
        if any(i < 0 for i in row_ids):
            raise DataError(f"{where}: position {t} has a negative token id")
        if any(math.isnan(lp) or lp > _PROB_SLACK for lp in row_lps):
            raise DataError(f"{where}: position {t} has a log-probability above 0 or NaN (give log-probabilities)")
        mass = sum(math.exp(lp) for lp in row_lps)
        if mass > 1 + _PROB_SLACK * max(1, len(row_lps)):
            raise DataError(f"{where}: position {t}'s top-k probabilities sum to {mass:.4f} > 1")


def merge_duplicates(ids: Sequence[int], logprobs: Sequence[float]) -> tuple[list[int], list[float]]:
    """One entry per token id: mapping two client tokens onto one LLM token adds their probabilities."""
    merged: dict[int, float] = {}
    for i, lp in zip(ids, logprobs, strict=True):
        merged[i] = _logaddexp(merged[i], float(lp)) if i in merged else float(lp)
    return list(merged), list(merged.values())


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    if lo == -math.inf:
        return hi
    return hi + math.log1p(math.exp(lo - hi))


# ------------------------------------------------------------------------------------------ datasets


def _expand_ref(row: dict[str, Any]) -> list[dict[str, Any]]:
    import ray

    part = ray.get(row["ref"])
    if not isinstance(part, list | tuple):
        raise DataError(f"an object ref of knowledge holds {type(part).__name__}; it must hold a list of records")
    return [normalize_record(r, f"ref {row['index']} record {i}") for i, r in enumerate(part)]


def as_dataset(knowledge: Any, shuffle_seed: int | None = None) -> Any:
    """A `ray.data.Dataset` of records from a Dataset, a list of records, or object ref(s) to such lists,
    shuffled with `shuffle_seed` unless it is None (a list in this process; otherwise by Ray Data tasks)."""
    import ray
    import ray.data

    if isinstance(knowledge, ray.data.Dataset):
        return knowledge if shuffle_seed is None else knowledge.random_shuffle(seed=shuffle_seed)
    if isinstance(knowledge, ray.ObjectRef):
        knowledge = [knowledge]
    if not isinstance(knowledge, Sequence) or isinstance(knowledge, str | bytes):
        raise DataError(f"knowledge must be a ray Dataset, a list of records or object refs, got "
                        f"{type(knowledge).__name__}")
    if not knowledge:
        raise DataError("no knowledge to train on: the list of records is empty (did the round select nothing?)")
    if all(isinstance(k, ray.ObjectRef) for k in knowledge):
        refs = ray.data.from_items([{"index": i, "ref": r} for i, r in enumerate(knowledge)])
        return as_dataset(refs.flat_map(_expand_ref), shuffle_seed)
    if any(isinstance(k, ray.ObjectRef) for k in knowledge):
        raise DataError("knowledge mixes object refs and records; give one or the other")
    records = [normalize_record(r, f"record {i}") for i, r in enumerate(knowledge)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    return ray.data.from_items(records)


# ------------------------------------------------------------------------------------------ batches


def _tokens(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one record, untruncated."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if row.get("input_ids") is not None:
        ids = list(row["input_ids"])
        if row.get("sft") is False:
            return ids, [IGNORE] * len(ids)
        start = row.get("sft_from") or 0
        return ids, [IGNORE] * start + ids[start:]
    if row.get("prompt") is not None:
        prompt = tokenizer(row["prompt"])["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + eos
        return prompt + completion, [IGNORE] * len(prompt) + completion
    ids = tokenizer(row["text"])["input_ids"] + eos
    return ids, list(ids)


def collate(rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int,
            vocab_size: int) -> dict[str, Any]:
    """Right-padded tensors of a micro-batch: input_ids, attention_mask, labels, and (when any row has them)
    topk_ids / topk_logprobs [B, L, K] with -inf padding; `tokens` counts the non-padding tokens."""
    if not rows:
        raise DataError("an empty batch of knowledge reached a training worker")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs, topks = [], []
    for row in rows:
        ids, labels = _tokens(dict(row), tokenizer)
        ids, labels = ids[:max_length], labels[:max_length]
        if max(ids) >= vocab_size:
            raise DataError(f"token id {max(ids)} is outside the server LLM's vocabulary ({vocab_size})")
        topk: list[tuple[list[int], list[float]]] | None = None
        if row.get("topk_ids") is not None:
            topk = [merge_duplicates(i, lp) for i, lp in
                    zip(row["topk_ids"][:max_length], row["topk_logprobs"][:max_length], strict=True)]
            top = max((max(i) for i, _ in topk if i), default=0)
            if top >= vocab_size:
                raise DataError(f"top-k token id {top} is outside the server LLM's vocabulary ({vocab_size}); "
                                "map client distributions to the LLM vocabulary first")
        seqs.append((ids, labels))
        topks.append(topk)
    width = max(len(ids) for ids, _ in seqs)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad, dtype=torch.long)
    labels_t = torch.full((batch, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for b, (ids, labels) in enumerate(seqs):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels_t[b, :len(labels)] = torch.tensor(labels)
        mask[b, :len(ids)] = 1
    out: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "labels": labels_t,
                           "topk_ids": None, "topk_logprobs": None, "tokens": int(mask.sum())}
    k = max((len(i) for topk in topks if topk for i, _ in topk), default=0)
    if k:
        topk_ids = torch.zeros((batch, width, k), dtype=torch.long)
        topk_lps = torch.full((batch, width, k), float("-inf"))
        for b, topk in enumerate(topks):
            for t, (ids_t, lps_t) in enumerate(topk or []):
                topk_ids[b, t, :len(ids_t)] = torch.tensor(ids_t, dtype=torch.long)
                topk_lps[b, t, :len(lps_t)] = torch.tensor(lps_t)
        out["topk_ids"], out["topk_logprobs"] = topk_ids, topk_lps
    return out
