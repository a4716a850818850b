"""FedMKT's driver side as plain functions (no Ray, no models): checking what a client sent, carrying top-k
knowledge from one tokenisation to another, choosing a teacher per public sample, building the records.

Knowledge of one model on one public text is its token ids and `Rows`: at position t, the top-k ids of its
vocabulary with log-probabilities of the token after t (the layout of `estuary.serve.types.TextTopK`).
Aligned rows are the same in another model's positions and vocabulary (`estuary.knowledge.alignment`); an
empty row carries nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from estuary.knowledge.alignment import VocabMapping, position_map, transfer_topk
from estuary.knowledge.selection import Metric, Rule, cross_entropy, teacher_weights
from estuary.serve.types import TextTopK, TopKLogprobs

Rows = tuple[list[list[int]], list[list[float]]]
LLM = "llm"  # the server LLM's name among the candidate teachers
SELF = "self"  # a client's own distribution among its candidates


class KnowledgeRejected(ValueError):
    """A client's knowledge payload failed the checks; the message names the client."""


def check_client_knowledge(client_id: str, payload: Any, *, texts: int, vocab_size: int | None = None) -> TopKLogprobs:
    """The client's TopKLogprobs payload, parsed and checked: schema version, lengths, finite sorted
    log-probabilities (no NaN/inf), k entries per row (no empty rows), one text per public example, at least
    two tokens per text, token ids within the client's vocabulary. KnowledgeRejected names the client."""
    try:
        if not isinstance(payload, Mapping):
            raise ValueError(f"no top-k payload (got {type(payload).__name__})")
        topk = TopKLogprobs.from_dict(dict(payload))
        if len(topk.texts) != texts:
            raise ValueError(f"{len(topk.texts)} texts, expected one per public example ({texts})")
        for t, item in enumerate(topk.texts):
            if len(item.token_ids) < 2:
                raise ValueError(f"text {t}: {len(item.token_ids)} token(s), nothing to distil")
            ids = [*item.token_ids, *(i for pos in item.topk for i in pos.ids)]
            if min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
                raise ValueError(f"text {t}: token id outside the vocabulary (0..{vocab_size})")
    except (ValueError, TypeError) as exc:
        raise KnowledgeRejected(f"client {client_id}: knowledge rejected: {exc}") from None
    return topk


def rows_of(item: TextTopK) -> Rows:
    return [list(p.ids) for p in item.topk], [list(p.logprobs) for p in item.topk]


def texts_of(ids: Sequence[int], vocab_texts: Sequence[str]) -> list[str]:
    """Token texts of a tokenisation ("" for special tokens and ids past the vocabulary: left unaligned)."""
    return [vocab_texts[i] if 0 <= i < len(vocab_texts) else "" for i in ids]


def align_rows(src_texts: Sequence[str], src_rows: Rows, dst_texts: Sequence[str],
               mapping: np.ndarray) -> tuple[Rows, float]:
    """Source rows carried to the destination positions and vocabulary, and the sequence coverage."""
    positions, coverage = position_map(src_texts, dst_texts)
    keep = [[(i, lp) for i, lp in zip(ids, lps, strict=True) if 0 <= i < len(mapping)]
            for ids, lps in zip(*src_rows, strict=True)]
    ids, lps = transfer_topk([[i for i, _ in r] for r in keep], [[lp for _, lp in r] for r in keep], positions,
                             mapping)
    return (ids, lps), coverage


def _target_logprob(ids: Sequence[int], lps: Sequence[float], target: int, vocab_size: int) -> float:
    if not ids:
        return -math.log(vocab_size)  # no distribution here: uniform
    for i, lp in zip(ids, lps, strict=True):
        if i == target:
            return lp
    mass = min(sum(math.exp(lp) for lp in lps), 1.0 - 1e-9)
    return math.log1p(-mass) - math.log(max(vocab_size - len(ids), 1))  # the tail, spread evenly


def topk_cross_entropy(rows: Rows, token_ids: Sequence[int], vocab_size: int) -> float:
    """Mean -log p(token t+1 | row t) over the text: the CE of a (possibly aligned) top-k teacher on the
    ground truth. A token outside a row gets the row's remaining mass spread evenly over the tokens it does
    not list; an empty row is uniform over the vocabulary."""
    n = min(len(rows[0]), len(token_ids) - 1)
    if n <= 0:
        return math.inf
    return -sum(_target_logprob(rows[0][t], rows[1][t], token_ids[t + 1], vocab_size) for t in range(n)) / n


def mix_rows(rows: Sequence[Rows], weights: Sequence[float]) -> Rows:
    """Per position the mixture Σ w·p of several teachers' rows (same positions and vocabulary)."""
    out_ids: list[list[int]] = []
    out_lps: list[list[float]] = []
    for t in range(len(rows[0][0])):
        merged: dict[int, float] = {}
        for (ids, lps), w in zip(rows, weights, strict=True):
            for i, lp in zip(ids[t], lps[t], strict=True):
                merged[i] = merged.get(i, 0.0) + w * math.exp(lp)
        order = sorted((i for i in merged if merged[i] > 0), key=lambda i: -merged[i])
        out_ids.append(order)
        out_lps.append([math.log(merged[i]) for i in order])
    return out_ids, out_lps


def choose_teacher(candidates: Mapping[str, Rows], token_ids: Sequence[int], vocab_size: int,
                   rule: Rule = "greater", own_ces: Mapping[str, float] | None = None,
                   ) -> tuple[Rows, str, dict[str, float]]:
    """The target rows of one sample, the winning candidate (highest weight) and every candidate's CE.
    Candidates are in the target model's positions and vocabulary; put the model itself first. The CE is
    `own_ces` (each model's own, on its own tokens) when given, else that of the candidate's rows here."""
    ces = ({name: own_ces[name] for name in candidates} if own_ces is not None else
           {name: topk_cross_entropy(rows, token_ids, vocab_size) for name, rows in candidates.items()})
    weights = teacher_weights(ces, rule)
    best = max(weights, key=lambda n: weights[n])
    used = [n for n in candidates if weights[n] > 0]
    if len(used) == 1:
        return candidates[used[0]], best, ces
    return mix_rows([candidates[n] for n in used], [weights[n] for n in used]), best, ces


def distill_record(input_ids: Sequence[int], rows: Rows, sft_from: int = 0) -> dict[str, Any]:
    """A server-LLM distillation record (`estuary.train.knowledge`): its tokens, the chosen targets, and the
    first token of its language-model term (`sft_from`; past the end: no LM term, distillation only)."""
    rec: dict[str, Any] = {"input_ids": [int(i) for i in input_ids], "topk_ids": [list(r) for r in rows[0]],
                           "topk_logprobs": [list(r) for r in rows[1]]}
    if sft_from >= len(input_ids):
        rec["sft"] = False
    elif sft_from > 0:
        rec["sft_from"] = sft_from
    return rec


def completion_start(token_ids: Sequence[int], completion_ids: Sequence[int] | None) -> int:
    """Index of a text's first ground-truth token: where its tokens end with the completion's own tokens
    (clients concatenate them as ids; a served LLM's whole-text tokenisation ends the same way for a label
    word), else after what they share at the end. None: every token is ground truth."""
    if completion_ids is None:
        return 0
    n = 0
    for a, b in zip(reversed(token_ids), reversed(completion_ids), strict=False):
        if a != b:
            break
        n += 1
    return len(token_ids) - n


def _own_ce(item: TextTopK, start: int) -> float:
    """A model's own CE on a text's ground-truth tokens (`token_logprobs[t]` is that of token t)."""
    return cross_entropy(item.token_logprobs[start:])


class Vocabularies(Protocol):
    """Token texts of a model's vocabulary and cached MinED mappings between two models' vocabularies."""

    def texts(self, spec: str) -> list[str]: ...

    def mapping(self, src: str, dst: str) -> VocabMapping: ...


class TokenizerBank:
    """`Vocabularies` from the models' own tokenizers (loaded once in the driver)."""

    def __init__(self) -> None:
        self._tok: dict[str, Any] = {}
        self._texts: dict[str, list[str]] = {}
        self._maps: dict[tuple[str, str], VocabMapping] = {}

    def tokenizer(self, spec: str) -> Any:
        if spec not in self._tok:
            from transformers import AutoTokenizer

            from estuary.models import resolve_model

            self._tok[spec] = AutoTokenizer.from_pretrained(resolve_model(spec))
        return self._tok[spec]

    def texts(self, spec: str) -> list[str]:
        if spec not in self._texts:
            from estuary.knowledge.alignment import token_texts

            self._texts[spec] = token_texts(self.tokenizer(spec))
        return self._texts[spec]

    def mapping(self, src: str, dst: str) -> VocabMapping:
        if (src, dst) not in self._maps:
            from estuary.knowledge.alignment import cached_vocab_mapping

            self._maps[src, dst] = cached_vocab_mapping(self.tokenizer(src), self.tokenizer(dst))
        return self._maps[src, dst]


@dataclass
class ClientExchange:
    spec: str
    targets: list[Rows] = field(default_factory=list)  # per public sample, in the client's tokenisation
    coverage_to_llm: list[float] = field(default_factory=list)  # per sample: LLM positions matched 1:1
    coverage_from_llm: list[float] = field(default_factory=list)  # per sample: client positions matched 1:1
    took_llm: int = 0  # samples where the client distils towards the LLM (else itself)
    chosen_by_llm: int = 0  # samples where the LLM distils towards this client
    positions: int = 0
    vocab_exact_to_llm: float = 0.0
    vocab_exact_from_llm: float = 0.0


@dataclass
class Exchange:
    records: list[dict[str, Any]]  # server-LLM distillation records, one per public sample
    clients: dict[str, ClientExchange]
    llm_choices: Counter[str]  # winning teacher of the LLM's samples (LLM = itself)


def _own_ce_of(item: TextTopK, spec: str, sample: int,
               completion_ids: Mapping[str, Sequence[Sequence[int]]] | None) -> float:
    return _own_ce(item, completion_start(item.token_ids, completion_ids[spec][sample] if completion_ids else None))


def _new_exchange(llm_spec: str, clients: Mapping[str, tuple[str, TopKLogprobs]],
                  vocab: Vocabularies) -> Exchange:
    """An empty exchange with each client's vocabulary shares filled in."""
    out = {cid: ClientExchange(spec) for cid, (spec, _) in clients.items()}
    for cid, (spec, _) in clients.items():
        out[cid].vocab_exact_to_llm = vocab.mapping(spec, llm_spec).exact_share
        out[cid].vocab_exact_from_llm = vocab.mapping(llm_spec, spec).exact_share
    return Exchange([], out, Counter())


def llm_side(llm_spec: str, llm: TopKLogprobs, clients: Mapping[str, tuple[str, TopKLogprobs]],
             vocab: Vocabularies, rule: Rule = "greater", metric: Metric = "own",
             completion_ids: Mapping[str, Sequence[Sequence[int]]] | None = None) -> Exchange:
    """The LLM's half of the exchange: every client's knowledge aligned to the LLM, and per sample the LLM's
    target among itself (`llm`) and the aligned clients, as distillation records. The clients' targets are left
    empty (`client_side` fills them). See `mutual_exchange` for the CE and `completion_ids`."""
    ex = _new_exchange(llm_spec, clients, vocab)
    llm_texts = vocab.texts(llm_spec)
    for s, item in enumerate(llm.texts):
        l_texts = texts_of(item.token_ids, llm_texts)
        candidates: dict[str, Rows] = {LLM: rows_of(item)}
        l_start = completion_start(item.token_ids, completion_ids[llm_spec][s] if completion_ids else None)
        own = {LLM: _own_ce(item, l_start)} if metric == "own" else None
        for cid, (spec, payload) in clients.items():
            c_item = payload.texts[s]
            c_texts = texts_of(c_item.token_ids, vocab.texts(spec))
            candidates[cid], cov = align_rows(c_texts, rows_of(c_item), l_texts, vocab.mapping(spec, llm_spec).ids)
            ex.clients[cid].coverage_to_llm.append(cov)
            if own is not None:
                own[cid] = _own_ce_of(c_item, spec, s, completion_ids)
        target, best, _ = choose_teacher(candidates, item.token_ids, len(llm_texts), rule, own)
        ex.records.append(distill_record(item.token_ids, target, l_start))
        ex.llm_choices[best] += 1
        if best in ex.clients:
            ex.clients[best].chosen_by_llm += 1
    return ex


def client_side(llm_spec: str, llm: TopKLogprobs, clients: Mapping[str, tuple[str, TopKLogprobs]],
                vocab: Vocabularies, rule: Rule = "greater", metric: Metric = "own",
                completion_ids: Mapping[str, Sequence[Sequence[int]]] | None = None,
                into: Exchange | None = None) -> Exchange:
    """The clients' half: the LLM's knowledge `llm` aligned to every client, and per sample each client's target,
    the better of itself and the aligned LLM (filled into `into`, else a new exchange without records). `llm`
    may be another version of the LLM than the one `llm_side` saw: FedMKT's reference code recomputes the
    LLM's distributions after its update, and the clients distil from those."""
    ex = into if into is not None else _new_exchange(llm_spec, clients, vocab)
    llm_texts = vocab.texts(llm_spec)
    for s, item in enumerate(llm.texts):
        l_texts, l_rows = texts_of(item.token_ids, llm_texts), rows_of(item)
        l_ce = _own_ce_of(item, llm_spec, s, completion_ids) if metric == "own" else None
        for cid, (spec, payload) in clients.items():
            c_item, c = payload.texts[s], ex.clients[cid]
            c_texts = texts_of(c_item.token_ids, vocab.texts(spec))
            from_llm, cov_back = align_rows(l_texts, l_rows, c_texts, vocab.mapping(llm_spec, spec).ids)
            pair = None if l_ce is None else {SELF: _own_ce_of(c_item, spec, s, completion_ids), LLM: l_ce}
            target, best, _ = choose_teacher({SELF: rows_of(c_item), LLM: from_llm}, c_item.token_ids,
                                             len(vocab.texts(spec)), rule, pair)
            c.targets.append(target)
            c.took_llm += best == LLM
            c.coverage_from_llm.append(cov_back)
            c.positions += len(c_item.token_ids)
    return ex


def mutual_exchange(llm_spec: str, llm: TopKLogprobs, clients: Mapping[str, tuple[str, TopKLogprobs]],
                    vocab: Vocabularies, rule: Rule = "greater", metric: Metric = "own",
                    completion_ids: Mapping[str, Sequence[Sequence[int]]] | None = None) -> Exchange:
    """Align every client's knowledge to the LLM and the LLM's to every client, and choose per sample: the
    LLM's target among itself and the aligned clients, each client's among itself and the aligned LLM
    (`llm_side` then `client_side`, both from the same `llm`). A
    teacher's CE is its own on the text's ground truth (metric "own", FuseLLM/FedMKT's) or its aligned rows'
    ("aligned"). `completion_ids` (model spec -> each public text's completion tokens) makes the completion the
    ground truth, as FedMKT's reference code does by masking the prompt: the own CE and the LLM records' LM
    term count only the completion's tokens. Without it every token counts."""
    ex = llm_side(llm_spec, llm, clients, vocab, rule, metric, completion_ids)
    return client_side(llm_spec, llm, clients, vocab, rule, metric, completion_ids, into=ex)
