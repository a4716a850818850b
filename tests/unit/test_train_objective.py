"""The server training losses against values computed by hand (no model, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from estuary.lm.objective import IGNORE, mix_losses, objective, sft_loss, topk_kl_loss

NEG = float("-inf")


def _one_position(logits: list[float]) -> torch.Tensor:
    return torch.tensor([[logits]], dtype=torch.float32)  # [B=1, L=1, V]


def test_sft_loss_uniform_and_masked() -> None:
    # Uniform logits over 3 tokens: every labelled token costs ln 3. Position t predicts label t+1.
    logits = torch.zeros(1, 3, 3)
    labels = torch.tensor([[IGNORE, 2, 1]])
    loss, count = sft_loss(logits, labels)
    assert count == 2 and loss.item() == pytest.approx(math.log(3), abs=1e-6)
    # A confident right answer: logits [0, ln 8, 0] → p = 8/10 → CE = ln(10/8).
    logits = torch.tensor([[[0.0, math.log(8), 0.0], [0.0, 0.0, 0.0]]])
    loss, count = sft_loss(logits, torch.tensor([[IGNORE, 1]]))
    assert count == 1 and loss.item() == pytest.approx(math.log(10 / 8), abs=1e-6)


def test_sft_loss_without_labels_is_zero_but_backpropagates() -> None:
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss, count = sft_loss(logits, torch.full((2, 4), IGNORE))
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_topk_kl_with_tail_bucket_hand_computed() -> None:
    # Student uniform over 4 tokens; teacher gives token 0 probability 0.5 and leaves 0.5 in the tail.
    # Buckets: teacher (0.5, 0.5), student (0.25, 0.75) → KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3).
    loss, count = topk_kl_loss(_one_position([0, 0, 0, 0]), torch.tensor([[[0]]]),
                               torch.tensor([[[math.log(0.5)]]]))
    assert count == 1 and loss.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert loss.item() == pytest.approx(0.143841, abs=1e-6)


def test_topk_kl_temperature_hand_computed() -> None:
    # T = 2: student logits [2,0,0,0]/2 → q0 = e/(e+3), tail 3/(e+3); teacher (ln .5, tail ln .5)/2 → (0.5, 0.5).
    q0 = math.e / (math.e + 3)
    expected = 4 * (0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0)))  # scaled by T²
    loss, _ = topk_kl_loss(_one_position([2, 0, 0, 0]), torch.tensor([[[0]]]), torch.tensor([[[math.log(0.5)]]]),
                           temperature=2.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.0048602, abs=1e-6)


def test_topk_kl_without_tail_renormalises_the_teacher() -> None:
    # Teacher top-2 (0.3, 0.1) → renormalised (0.75, 0.25); student 0.25 each → KL = 0.75 ln 3.
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[math.log(0.3), math.log(0.1)]]])
    loss, _ = topk_kl_loss(_one_position([0, 0, 0, 0]), ids, lps, tail_bucket=False)
    assert loss.item() == pytest.approx(0.75 * math.log(3), abs=1e-6)
    # With the tail: teacher (0.3, 0.1, 0.6) vs student (0.25, 0.25, 0.5).
    with_tail = 0.3 * math.log(0.3 / 0.25) + 0.1 * math.log(0.1 / 0.25) + 0.6 * math.log(0.6 / 0.5)
    loss, _ = topk_kl_loss(_one_position([0, 0, 0, 0]), ids, lps)
    assert loss.item() == pytest.approx(with_tail, abs=1e-6)


def test_topk_kl_padding_and_positions_without_target() -> None:
    logits = torch.zeros(1, 2, 4)
    ids = torch.tensor([[[0, 3], [0, 0]]])  # position 0: one real entry + padding; position 1: no target
    lps = torch.tensor([[[math.log(0.5), NEG], [NEG, NEG]]])
    loss, count = topk_kl_loss(logits, ids, lps)
    assert count == 1 and loss.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    none, count = topk_kl_loss(logits, ids, torch.full_like(lps, NEG))
    assert count == 0 and none.item() == 0.0


def test_topk_kl_is_zero_when_the_student_is_the_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    top = torch.log_softmax(logits, dim=-1).topk(4, dim=-1)
    loss, count = topk_kl_loss(logits, top.indices, top.values)
    assert count == 6 and abs(loss.item()) < 1e-5
    other, _ = topk_kl_loss(torch.randn(2, 3, 11), top.indices, top.values)
    assert other.item() > 0.01


def test_topk_kl_teacher_with_no_tail_mass() -> None:
    # The teacher's top k cover all its mass: the tail bucket is empty and costs nothing.
    loss, _ = topk_kl_loss(_one_position([0, 0, 0, 0]), torch.tensor([[[0, 1]]]),
                           torch.tensor([[[math.log(0.5), math.log(0.5)]]]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # (0.5, 0.5, 0) vs (0.25, 0.25, 0.5)


def test_topk_kl_gradient_moves_the_student_towards_the_teacher() -> None:
    logits = torch.zeros(1, 1, 5, requires_grad=True)
    ids, lps = torch.tensor([[[2]]]), torch.tensor([[[math.log(0.9)]]])
    opt = torch.optim.SGD([logits], lr=1.0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss, _ = topk_kl_loss(logits, ids, lps)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
    assert torch.softmax(logits.detach(), -1)[0, 0, 2].item() == pytest.approx(0.9, abs=0.05)


def test_mix_losses() -> None:
    sft, kd = torch.tensor(2.0), torch.tensor(4.0)
    assert mix_losses(sft, kd, 0.1).item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    assert mix_losses(sft, kd, 0.4, has_kd=False).item() == 2.0
    assert mix_losses(sft, kd, 0.4, has_sft=False).item() == 4.0
    with pytest.raises(ValueError):
        mix_losses(sft, kd, 1.5)
    with pytest.raises(ValueError):
        topk_kl_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1),
                     temperature=0)


def test_objective_mixes_the_two_terms() -> None:
    logits = torch.zeros(1, 2, 4)
    labels = torch.tensor([[IGNORE, 1]])
    ids = torch.tensor([[[0], [0]]])
    lps = torch.tensor([[[math.log(0.5)], [NEG]]])
    parts = objective(logits, labels, ids, lps, distill_weight=0.25)
    sft, kd = math.log(4), 0.5 * math.log(4 / 3)
    assert parts.sft_tokens == 1 and parts.kd_positions == 1
    assert parts.loss.item() == pytest.approx(0.75 * sft + 0.25 * kd, abs=1e-6)
    only_sft = objective(logits, labels, None, None, distill_weight=0.25)
    assert only_sft.loss.item() == pytest.approx(sft, abs=1e-6) and only_sft.kd_positions == 0
    only_kd = objective(logits, labels, ids, lps, distill_weight=1.0)
    assert only_kd.loss.item() == pytest.approx(kd, abs=1e-6) and only_kd.sft_tokens == 0
    nothing = objective(logits, torch.full((1, 2), IGNORE), None, None, distill_weight=0.0)
    assert nothing.loss.item() == 0.0


def test_kd_reduction_token_mean_and_batchmean_by_hand() -> None:
    """DistilDP's reference code reduces the KL as KLDivLoss(reduction="batchmean") on [B, L, V]: the sum over
    positions divided by the B sequences. Two sequences, uniform students over 4 tokens; targets at three
    positions: p(token 0) = 0.5 twice (KL a = 0.5 ln(4/3) each, see above) and 0.25 once (the teacher's
    buckets (0.25, 0.75) are the student's: KL 0); the fourth position has none."""
    logits = torch.zeros(2, 2, 4)
    ids = torch.zeros(2, 2, 1, dtype=torch.long)
    lps = torch.tensor([[[math.log(0.5)], [NEG]], [[math.log(0.5)], [math.log(0.25)]]])
    a = 0.5 * math.log(4 / 3)
    mean, n = topk_kl_loss(logits, ids, lps)
    assert n == 3 and mean.item() == pytest.approx(2 * a / 3, abs=1e-6)
    batch, n = topk_kl_loss(logits, ids, lps, reduction="batchmean")
    assert n == 3 and batch.item() == pytest.approx(2 * a / 2, abs=1e-6)
    hot, _ = topk_kl_loss(logits, ids, lps, reduction="batchmean", temperature=2.0)  # T² scales both alike
    assert hot.item() == pytest.approx(topk_kl_loss(logits, ids, lps, temperature=2.0)[0].item() * 3 / 2, abs=1e-6)
    # the same reduction reaches the mixed objective; the CE stays a token mean (ln 4 at each of 2 labels)
    labels = torch.tensor([[IGNORE, 1], [IGNORE, 2]])
    parts = objective(logits, labels, ids, lps, distill_weight=0.4, kd_reduction="batchmean")
    assert parts.kd.item() == pytest.approx(a, abs=1e-6) and parts.sft.item() == pytest.approx(math.log(4))
    assert parts.loss.item() == pytest.approx(0.6 * math.log(4) + 0.4 * a, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        topk_kl_loss(logits, ids, lps, reduction="sum")  # type: ignore[arg-type]
