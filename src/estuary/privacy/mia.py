"""Loss-threshold membership inference: per-example losses, the attack's AUC with a DeLong confidence
interval, and the largest AUC an (ε, δ)-DP model allows such a test.

A member (an example the model was trained on) tends to have a lower loss than a non-member, so the
score of an example is −loss and every threshold on it is one attack; the AUC over all thresholds is
the probability that a random member scores above a random non-member (0.5: no better than chance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from estuary.data.task import Example, Task

_Z95 = 1.959963984540054


def auc_with_ci(positives: Sequence[float], negatives: Sequence[float], z: float = _Z95) -> tuple[float, float, float]:
    """AUC of scores (positives should score higher) and its DeLong normal CI, clipped to [0, 1]."""
    x = torch.as_tensor(list(positives), dtype=torch.float64)
    y = torch.as_tensor(list(negatives), dtype=torch.float64)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("an AUC needs at least one member and one non-member")
    psi = (x[:, None] > y[None, :]).double() + 0.5 * (x[:, None] == y[None, :]).double()
    v10, v01 = psi.mean(dim=1), psi.mean(dim=0)
    auc = float(v10.mean())
    var = (float(v10.var()) / m if m > 1 else 0.0) + (float(v01.var()) / n if n > 1 else 0.0)
    half = z * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def dp_auc_bound(epsilon: float, delta: float, points: int = 20001) -> float:
    """The largest AUC of any test telling whether one example was in the training set of an (ε, δ)-DP
    model: its ROC curve lies below TPR = min(1, e^ε·FPR + δ, 1 − e^−ε·(1 − δ − FPR)) (Kairouz et al.)."""
    if math.isinf(epsilon):
        return 1.0
    fpr = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    tpr = torch.minimum(torch.minimum(torch.ones_like(fpr), math.exp(epsilon) * fpr + delta),
                        1 - math.exp(-epsilon) * (1 - delta - fpr))
    return float(torch.trapezoid(tpr.clamp(0.0, 1.0), fpr))


def example_losses(model: Any, tokenizer: Any, task: Task, examples: Sequence[Example], *, max_length: int,
                   batch_size: int = 16) -> list[float]:
    """Per-example mean completion-token loss (the attack's signal), in eval mode without grad."""
    from estuary.lm.encoding import encode, padding_id
    from estuary.privacy.stepper import per_example_losses

    seqs = encode(tokenizer, task, list(examples), max_length=max_length)
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(seqs), batch_size):
                out.extend(per_example_losses(model, seqs[i : i + batch_size], padding_id(tokenizer)).tolist())
    finally:
        model.train(was_training)
    return out


def loss_threshold_attack(model: Any, tokenizer: Any, task: Task, members: Sequence[Example],
                          non_members: Sequence[Example], *, max_length: int) -> dict[str, float]:
    """auc, ci_low, ci_high (95 %), and the mean member / non-member loss of the loss-threshold attack."""
    lm = example_losses(model, tokenizer, task, members, max_length=max_length)
    ln = example_losses(model, tokenizer, task, non_members, max_length=max_length)
    auc, lo, hi = auc_with_ci([-v for v in lm], [-v for v in ln])
    return {"auc": auc, "ci_low": lo, "ci_high": hi, "loss_members": sum(lm) / len(lm),
            "loss_non_members": sum(ln) / len(ln)}
