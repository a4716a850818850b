"""Training objectives of the server LLM, as pure functions of logits and targets (no model, no Ray).

Shapes: `logits` [B, L, V] are the model's outputs at every position; position t predicts token t+1.

- `sft_loss`: next-token cross-entropy on the labelled tokens (`labels[t] = IGNORE` masks token t).
- `topk_kl_loss`: KL(teacher ‖ student) at every position that carries a teacher distribution, given as
  top-k token ids already mapped to the LLM's vocabulary and their log-probabilities (`-inf` pads a row
  with fewer than k entries; a position whose entries are all `-inf` has no target). With the tail bucket
  the mass outside the top k (1 - Σ top-k) is one more bucket on both sides, so the KL is between two
  proper distributions over k+1 outcomes; the temperature T divides the student's logits and the
  teacher's log-probabilities (the tail bucket counts as one pseudo-token) and the KL is scaled by T².
  `reduction` weighs the positions: "token_mean" averages the KL over the positions that carry a target;
  "batchmean" sums it over them and divides by the number of sequences B, as PyTorch's
  `KLDivLoss(reduction="batchmean")` does on [B, L, V] (DistilDP's reference code), so it weighs about as many
  times more than the token mean as a sequence has target positions.
- `mix_losses`: (1-λ)·SFT + λ·KD, falling back to the term that has targets when the other has none.
- `hidden_mse_loss`: DistilDP's hidden-state term, the mean squared error between the student's hidden
  states (projected to the teacher's width when the widths differ) and the teacher's at the positions that
  carry a teacher state, divided by the teacher states' mean square so that it does not depend on their scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a token that is not trained on (prompt, padding)
KDReduction = Literal["token_mean", "batchmean"]
KD_REDUCTIONS: tuple[str, ...] = ("token_mean", "batchmean")


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor  # what to backpropagate
    sft: torch.Tensor  # mean SFT cross-entropy (0 when no labelled token)
    kd: torch.Tensor  # distillation KL, reduced as asked (0 when no teacher position)
    sft_tokens: int  # labelled tokens in the batch
    kd_positions: int  # positions with a teacher distribution


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that still depends on `logits` (every rank must backpropagate, even with nothing to learn)."""
    return logits.sum() * 0.0


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled tokens, and their count."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    count = int((shift_labels != IGNORE).sum())
    if count == 0:
        return _zero(logits), 0
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total / count, count


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends; -inf at x = 0."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_kl_loss(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, *,
                 temperature: float = 1.0, tail_bucket: bool = True,
                 reduction: KDReduction = "token_mean") -> tuple[torch.Tensor, int]:
    """KL(teacher ‖ student) over positions with a teacher distribution, and their count: their mean
    ("token_mean"), or their sum divided by the batch's sequences B = logits.shape[0] ("batchmean").

    `topk_ids` [B, L, K] (long) and `topk_logprobs` [B, L, K] (teacher log-probabilities at temperature 1;
    `-inf` marks padding). Ids must be distinct within a position (merge duplicates first).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
    valid = torch.isfinite(topk_logprobs)
    positions = valid.any(dim=-1)
    count = int(positions.sum())
    if count == 0:
        return _zero(logits), 0
    neg_inf = torch.tensor(float("-inf"), device=logits.device)
    t = float(temperature)
    # Only positions with a target: [N, V] student log-probs, [N, K] teacher.
    student = torch.log_softmax(logits[positions].float() / t, dim=-1)
    ids = topk_ids[positions].clamp(min=0)
    mask = valid[positions]
    teacher = topk_logprobs[positions].float()
    student_k = torch.where(mask, student.gather(-1, ids), neg_inf)
    if tail_bucket:
        teacher_tail = _log1mexp(torch.logsumexp(torch.where(mask, teacher, neg_inf), dim=-1))  # [N]
        t_logits = torch.cat([torch.where(mask, teacher / t, neg_inf), (teacher_tail / t).unsqueeze(-1)], dim=-1)
        p_log = torch.log_softmax(t_logits, dim=-1)  # tempered teacher over k+1 buckets
        # Student tail from its top-k mass; capped at 1 - 1e-7 in float32, so the tail never becomes log 0.
        q_tail = _log1mexp(torch.logsumexp(student_k, dim=-1).clamp(max=-1e-7))
        q_log = torch.cat([student_k, q_tail.unsqueeze(-1)], dim=-1)
    else:
        p_log = torch.log_softmax(torch.where(mask, teacher / t, neg_inf), dim=-1)  # teacher renormalised over k
        q_log = student_k
    p = p_log.exp()
    terms = torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))  # 0·log 0 = 0
    kl = terms.sum(dim=-1)
    reduced = kl.mean() if reduction == "token_mean" else kl.sum() / logits.shape[0]
    return reduced * (t * t), count


def mix_losses(sft: torch.Tensor, kd: torch.Tensor, distill_weight: float, *, has_sft: bool = True,
               has_kd: bool = True) -> torch.Tensor:
    """(1-λ)·sft + λ·kd; a term without targets is dropped and the other one is used alone."""
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
    if has_sft and has_kd:
        return (1.0 - distill_weight) * sft + distill_weight * kd
    if has_kd:
        return kd
    return sft


def objective(logits: torch.Tensor, labels: torch.Tensor, topk_ids: torch.Tensor | None,
              topk_logprobs: torch.Tensor | None, *, distill_weight: float, temperature: float = 1.0,
              tail_bucket: bool = True, kd_reduction: KDReduction = "token_mean") -> LossParts:
    """The loss of one batch: SFT on the labels (token mean), KD towards the top-k targets (reduced by
    `kd_reduction`, see `topk_kl_loss`), mixed by `distill_weight`."""
    want_sft = distill_weight < 1.0
    want_kd = distill_weight > 0.0 and topk_ids is not None and topk_logprobs is not None
    sft, n_sft = sft_loss(logits, labels) if want_sft else (_zero(logits), 0)
    if want_kd:
        assert topk_ids is not None and topk_logprobs is not None
        kd, n_kd = topk_kl_loss(logits, topk_ids, topk_logprobs, temperature=temperature, tail_bucket=tail_bucket,
                                reduction=kd_reduction)
    else:
        kd, n_kd = _zero(logits), 0
    if n_sft == 0 and n_kd == 0:
        return LossParts(_zero(logits), sft, kd, 0, 0)
    loss = mix_losses(sft, kd, distill_weight, has_sft=n_sft > 0, has_kd=n_kd > 0)
    return LossParts(loss, sft.detach(), kd.detach(), n_sft, n_kd)


def hidden_mse_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                    projection: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Normalised MSE between student hidden states [B, L, Ds] (times `projection` [Dt, Ds] when given) and
    teacher hidden states [B, L, Dt] at the positions where `mask` [B, L] is true, and their count:
    Σ‖W·h_s − h_t‖² / Σ‖h_t‖² over those positions (the teacher side carries no gradient)."""
    count = int(mask.sum())
    if count == 0:
        return _zero(student), 0
    h_s = student[mask].float()
    if projection is not None:
        h_s = h_s @ projection.float().t()
    h_t = teacher[mask].float().detach()
    if h_s.shape != h_t.shape:
        raise ValueError(f"student hidden states {tuple(h_s.shape)} do not match the teacher's {tuple(h_t.shape)}; "
                         "widths differ: give a projection")
    return (h_s - h_t).pow(2).sum() / h_t.pow(2).sum().clamp(min=1e-12), count
