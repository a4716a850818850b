"""Distillation towards teacher top-k distributions (FedMKT, DistilDP): (1-λ)·LM + λ·KD (+ β·hidden-state MSE),
as a step of the one training loop (`estuary.lm.loop.TrainingLoop`) with the loss of `estuary.lm.objective`.

Layout (the same as the server LLM's top-k payload and `estuary.train.knowledge`): a sequence's row t is
the distribution of the token after position t, as top-k token ids of the model's vocabulary and their
log-probabilities; an empty row carries no target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from estuary.lm.encoding import collate, padding_id
from estuary.lm.loop import StepReport, TrainingLoop
from estuary.lm.objective import IGNORE, KDReduction, hidden_mse_loss, objective
from estuary.lm.seeding import batch_indices

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
    kd_reduction: KDReduction = "token_mean",
) -> DistillResult:
    """`steps` AdamW steps on the trainable (adapter) parameters with (1-λ)·LM + λ·KD per batch
    (`estuary.lm.objective.objective`), plus β·hidden-state MSE (`hidden_mse_loss`, the last layer's
    states, through `projection` [Dt, Ds] when given; it is trained too) when `hidden_weight` β > 0; the KD term
    is the per-position mean or, with `kd_reduction="batchmean"`, the sum over positions per sequence; batches,
    seeding and `optimizer_state` hand-off as in `estuary.lm.loop.train_steps`. The model is left in the
    mode it came in."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    if not examples:
        raise ValueError("distill_steps() needs at least one example")
    extra = [("distill.projection", projection)] if projection is not None else []
    loop = TrainingLoop(model, lr=lr, seed=seed, rng_tag=3, weight_decay=weight_decay,
                        optimizer_state=optimizer_state, extra_params=extra)
    pad = padding_id(tokenizer)

    def step(k: int) -> StepReport:
        batch = [examples[i] for i in batch_indices(len(examples), batch_size, k, seed)]
        input_ids, mask, labels, topk_ids, topk_lps = _batch_tensors(batch, pad, loop.device)
        out = model(input_ids=input_ids, attention_mask=mask, use_cache=False, output_hidden_states=hidden_weight > 0)
        parts = objective(out.logits, labels, topk_ids, topk_lps, distill_weight=distill_weight,
                          temperature=temperature, tail_bucket=tail_bucket, kd_reduction=kd_reduction)
        loss = parts.loss
        named = {"lm": float(parts.sft.detach()), "kd": float(parts.kd.detach())}
        if hidden_weight > 0:
            t_hidden, t_mask = _hidden_tensors(batch, input_ids.shape[1], loop.device)
            h_loss, _ = hidden_mse_loss(out.hidden_states[-1], t_hidden, t_mask & mask.bool(), projection)
            loss = loss + hidden_weight * h_loss
            named["hidden"] = float(h_loss.detach())
        loop.update(loss, grad_clip)
        return StepReport(float(loss.detach()), tokens=int(mask.sum()), examples=len(batch), parts=named)

    result = loop.run(steps, step)
    return DistillResult(result.losses, result.parts.get("lm", []), result.parts.get("kd", []),
                         result.parts.get("hidden", []), result.optimizer_state, steps * batch_size, result.tokens,
                         result.seconds)
