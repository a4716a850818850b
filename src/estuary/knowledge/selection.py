"""FedMKT's selective transfer: for each public sample, the teacher whose distribution is distilled is chosen
by its cross-entropy on the ground truth (the text itself): reward = exp(−CE); "greater" takes the best
teacher among the model itself and the aligned others, "weighted_mean" mixes them by softmax of rewards.
The CE is each model's own on its own tokens (FuseLLM/FedMKT's `metric_ce`), or that of its rows once aligned
to the target's tokens (`Metric`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

Rule = Literal["greater", "weighted_mean"]
Metric = Literal["own", "aligned"]  # a teacher's CE: its own on its own tokens, or its aligned rows' (see fedmkt)


def cross_entropy(token_logprobs: Sequence[float | None]) -> float:
    """Mean negative log-likelihood of a text's tokens (positions without a log-probability skipped)."""
    lps = [lp for lp in token_logprobs if lp is not None]
    if not lps:
        return math.inf
    return -sum(lps) / len(lps)


def teacher_weights(ces: Mapping[str, float], rule: Rule = "greater") -> dict[str, float]:
    """Weight of each candidate teacher of one sample (they sum to 1). Ties in "greater" go to the first
    candidate in `ces` order (put the model itself first: it keeps its own distribution on a tie)."""
    if not ces:
        raise ValueError("no candidate teachers")
    rewards = {name: math.exp(-ce) if math.isfinite(ce) else 0.0 for name, ce in ces.items()}
    if rule == "greater":
        best = max(rewards, key=lambda n: rewards[n])  # max keeps the first of equal values
        return {name: float(name == best) for name in rewards}
    if rule == "weighted_mean":
        top = max(rewards.values())
        exps = {n: math.exp(r - top) for n, r in rewards.items()}
        total = sum(exps.values())
        return {n: e / total for n, e in exps.items()}
    raise ValueError(f"unknown selection rule {rule!r}; use 'greater' or 'weighted_mean'")
