"""Client-side distillation (FedMKT, DistilDP): the SLM's top-k knowledge on public texts, and LoRA training
towards teacher top-k distributions with (1-λ)·LM + λ·KD (+ β·hidden-state MSE for DistilDP).

Pure torch/transformers (no Ray), alongside `estuary.actors.slm`: the same batching (epoch permutations
seeded by (seed, step)), optimizer hand-off and RNG scoping, with the loss of `estuary.train.objective`.

Layout (the same as the server LLM's top-k payload and `estuary.train.knowledge`): a sequence's row t is
the distribution of the token after position t, as top-k token ids of the model's vocabulary and their
log-probabilities; an empty row carries no target.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from estuary.actors.evaluation import Encoded, _length_batches, _pad_id, collate, encode, model_device
from estuary.actors.slm import (
    _batch_indices,
    _export_optimizer,
    _mix,
    _rng_scope,
    adamw,
    trainable_parameters,
)
from estuary.data.task import Example, Task
from estuary.serve.types import PositionTopK, TextTopK, TopKLogprobs
from estuary.train.objective import IGNORE, hidden_mse_loss, objective

if TYPE_CHECKING:
    from estuary.actors.context import ClientContext

Rows = tuple[list[list[int]], list[list[float]]]  # (top-k ids per position, their log-probabilities)


@dataclass(frozen=True)
class DistillExample:
    input_ids: list[int]
    labels: list[int]  # token t is trained by the LM term unless labels[t] == IGNORE
    topk_ids: list[list[int]]  # one row per position (empty: no target there)
    topk_logprobs: list[list[float]]
    hidden: np.ndarray | None = None  # [len(input_ids), teacher width] teacher hidden states (DistilDP)
    hidden_mask: tuple[bool, ...] | None = None  # positions that carry a teacher hidden state


@dataclass
class DistillResult:
    losses: list[float]  # the mixed loss of each step
    lm_losses: list[float]
    kd_losses: list[float]
    hidden_losses: list[float]  # the hidden-state term of each step (empty without one)
    optimizer_state: dict[str, Any]
    examples_seen: int
    tokens: int
    seconds: float


# ------------------------------------------------------------------------------ knowledge (top-k)


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Raw vocabulary strings of `ids` ("" for an id past the tokenizer's vocabulary, e.g. padded embeddings)."""
    return [t if isinstance(t, str) else "" for t in tokenizer.convert_ids_to_tokens(list(ids))]


def topk_knowledge(model: Any, tokenizer: Any, seqs: Sequence[Encoded], texts: Sequence[str], *, k: int,
                   batch_size: int) -> list[TextTopK]:
    """For each sequence: its tokens, log p(token t | tokens < t) and the top-k next-token distribution at
    every position (k capped at the vocabulary size). No gradient; the model's mode is restored."""
    pad = _pad_id(tokenizer)
    device = model_device(model)
    out: list[TextTopK | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _length_batches([len(ids) for ids, _ in seqs], batch_size):
                input_ids, mask = collate([seqs[i] for i in batch], pad, device)
                logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                for row, i in enumerate(batch):
                    ids = seqs[i][0]
                    logp = torch.log_softmax(logits[row, : len(ids)].float(), dim=-1)  # one row at a time
                    top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
                    nxt = torch.tensor(ids[1:], dtype=torch.long, device=logp.device)
                    token_lps = logp[torch.arange(len(ids) - 1, device=logp.device), nxt].tolist()
                    top_ids, top_lps = top.indices.tolist(), top.values.tolist()
                    out[i] = TextTopK(
                        text=texts[i], token_ids=list(ids), tokens=_token_strings(tokenizer, ids),
                        token_logprobs=[None, *token_lps],
                        topk=[PositionTopK(ids=a, tokens=_token_strings(tokenizer, a), logprobs=b)
                              for a, b in zip(top_ids, top_lps, strict=True)])
    finally:
        model.train(was_training)
    return [t for t in out if t is not None]


def public_sequences(tokenizer: Any, task: Task, public: Sequence[Example], max_length: int) -> list[Encoded]:
    """The client's tokenisation of each public example (prompt + label word, as in its training)."""
    return encode(tokenizer, task, public, max_length=max_length)


def client_topk(ctx: ClientContext, public: Sequence[Example], k: int) -> dict[str, Any]:
    """The client's SLM top-k on the public texts, as a TopKLogprobs payload dict (what crosses the wire)."""
    seqs = public_sequences(ctx.tokenizer, ctx.task, public, ctx.exp.training.max_length)
    texts = [ctx.task.prompt(ex) + ctx.task.completion(ex) for ex in public]
    items = topk_knowledge(ctx.model, ctx.tokenizer, seqs, texts, k=k, batch_size=ctx.exp.evaluation.batch_size)
    k_eff = len(items[0].topk[0].ids) if items and items[0].topk else k
    payload = TopKLogprobs(model=ctx.state.model, adapter=None, k=k_eff, engine="transformers",
                           dtype=ctx.exp.models.dtype, texts=items)
    return payload.to_dict()


# ------------------------------------------------------------------------------ training


def distill_example(ids: list[int], start: int, rows: Rows, *, lm_loss: str = "text") -> DistillExample:
    """A training example: the LM term on every token ("text") or on the completion only."""
    if len(rows[0]) != len(ids) or len(rows[1]) != len(ids):
        raise ValueError(f"{len(rows[0])} target rows for a sequence of {len(ids)} tokens")
    first = 1 if lm_loss == "text" else max(start, 1)
    labels = [IGNORE if t < first else tok for t, tok in enumerate(ids)]
    return DistillExample(list(ids), labels, [list(r) for r in rows[0]], [list(r) for r in rows[1]])


def _batch_tensors(batch: Sequence[DistillExample], pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, ...]:
    input_ids, mask = collate([(ex.input_ids, 0) for ex in batch], pad_id, device)
    width = input_ids.shape[1]
    k = max((len(r) for ex in batch for r in ex.topk_ids), default=0)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    topk_ids = torch.zeros((len(batch), width, max(k, 1)), dtype=torch.long)
    topk_lps = torch.full((len(batch), width, max(k, 1)), float("-inf"))
    for b, ex in enumerate(batch):
        labels[b, : len(ex.labels)] = torch.tensor(ex.labels, dtype=torch.long)
        for t, (ids_t, lps_t) in enumerate(zip(ex.topk_ids, ex.topk_logprobs, strict=True)):
            if ids_t:
                topk_ids[b, t, : len(ids_t)] = torch.tensor(ids_t, dtype=torch.long)
                topk_lps[b, t, : len(lps_t)] = torch.tensor(lps_t, dtype=torch.float32)
    return input_ids, mask, labels.to(device), topk_ids.to(device), topk_lps.to(device)


def _hidden_tensors(batch: Sequence[DistillExample], width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Teacher hidden states [B, L, Dt] (zeros where absent) and the mask [B, L] of positions carrying one."""
    dims = {ex.hidden.shape[1] for ex in batch if ex.hidden is not None}
    if len(dims) > 1:
        raise ValueError(f"teacher hidden states of different widths {sorted(dims)} in one batch")
    dim = dims.pop() if dims else 1
    hidden = torch.zeros((len(batch), width, dim), dtype=torch.float32)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, ex in enumerate(batch):
        if ex.hidden is None or ex.hidden_mask is None:
            continue
        n = len(ex.input_ids)
        hidden[b, :n] = torch.from_numpy(np.asarray(ex.hidden[:n], dtype=np.float32))
        mask[b, :n] = torch.tensor(ex.hidden_mask[:n], dtype=torch.bool)
    return hidden.to(device), mask.to(device)


def distill_steps(
    model: Any,
    tokenizer: Any,
    examples: Sequence[DistillExample],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    distill_weight: float,
    temperature: float = 1.0,
    tail_bucket: bool = True,
    optimizer_state: dict[str, Any] | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    hidden_weight: float = 0.0,
    projection: torch.nn.Parameter | None = None,
) -> DistillResult:
    """`steps` AdamW steps on the trainable (adapter) parameters with (1-λ)·LM + λ·KD per batch
    (`estuary.train.objective.objective`), plus β·hidden-state MSE (`hidden_mse_loss`, the last layer's
    states, through `projection` [Dt, Ds] when given; it is trained too) when `hidden_weight` β > 0; batches,
    seeding and `optimizer_state` hand-off as in `estuary.actors.slm.train_steps`. The model is left in the
    mode it came in."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    if not examples:
        raise ValueError("distill_steps() needs at least one example")
    began = time.perf_counter()
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters (attach_lora first)")
    if projection is not None:
        named = [*named, ("distill.projection", projection)]
    optimizer, names, params, start_step = adamw(named, lr, weight_decay, optimizer_state)
    device = model_device(model)
    pad_id = _pad_id(tokenizer)
    losses: list[float] = []
    lm: list[float] = []
    kd: list[float] = []
    hid: list[float] = []
    tokens = 0
    was_training = model.training
    model.train()
    try:
        for step in range(start_step, start_step + steps):
            batch = [examples[i] for i in _batch_indices(len(examples), batch_size, step, seed)]
            input_ids, mask, labels, topk_ids, topk_lps = _batch_tensors(batch, pad_id, device)
            tokens += int(mask.sum())
            with _rng_scope(_mix(seed, step, 3), device):
                out = model(input_ids=input_ids, attention_mask=mask, use_cache=False,
                            output_hidden_states=hidden_weight > 0)
                parts = objective(out.logits, labels, topk_ids, topk_lps, distill_weight=distill_weight,
                                  temperature=temperature, tail_bucket=tail_bucket)
                loss = parts.loss
                if hidden_weight > 0:
                    t_hidden, t_mask = _hidden_tensors(batch, input_ids.shape[1], device)
                    h_loss, _ = hidden_mse_loss(out.hidden_states[-1], t_hidden, t_mask & mask.bool(), projection)
                    loss = loss + hidden_weight * h_loss
                    hid.append(float(h_loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
            losses.append(float(loss.detach()))
            lm.append(float(parts.sft))
            kd.append(float(parts.kd))
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return DistillResult(losses, lm, kd, hid, _export_optimizer(optimizer, names, start_step + steps),
                         steps * batch_size, tokens, time.perf_counter() - began)


def client_distill(ctx: ClientContext, rnd: int, public: Sequence[Example], targets: Sequence[Rows | None], *,
                   steps: int, distill_weight: float, temperature: float = 1.0, tail_bucket: bool = True,
                   lm_loss: str = "text") -> DistillResult | None:
    """Train the client's LoRA on the public texts towards the server-chosen targets (one per public example,
    in the client's own tokenisation; None = no target for that example), its state carried over like
    `ClientContext.train_steps`. None when no example has a target that fits the client's tokenisation."""
    tr = ctx.exp.training
    seqs = public_sequences(ctx.tokenizer, ctx.task, public, tr.max_length)
    examples = [distill_example(ids, start, rows, lm_loss=lm_loss)
                for (ids, start), rows in zip(seqs, targets, strict=True)
                if rows is not None and len(rows[0]) == len(ids)]
    if not examples or steps == 0:
        return None
    result = distill_steps(
        ctx.model, ctx.tokenizer, examples, steps=steps, batch_size=tr.batch_size, lr=tr.lr,
        seed=ctx.seed(rnd, "distill"), distill_weight=distill_weight, temperature=temperature,
        tail_bucket=tail_bucket, optimizer_state=ctx.state.optimizer if tr.keep_optimizer_state else None,
        weight_decay=tr.weight_decay)
    ctx.state.optimizer = result.optimizer_state if tr.keep_optimizer_state else None
    ctx.state.steps_trained += steps
    ctx.trained = True
    return result
