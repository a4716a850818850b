"""Client sampling per round: a fraction or a count of the clients, drawn from the run seed and the round.

The draw depends only on (seed, round, the client list), so a resumed run, a baseline and the method see
the same clients in the same round, and a rerun with the same seed samples the same ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def sample_size(n: int, fraction: float | None = None, count: int | None = None) -> int:
    """How many of `n` clients take part: all by default, at least one when sampling."""
    if count is not None:
        return max(1, min(n, count))
    if fraction is not None:
        return max(1, min(n, round(fraction * n)))
    return n


def sample_clients(
    clients: Sequence[str], rnd: int, *, seed: int, fraction: float | None = None, count: int | None = None
) -> list[str]:
    """The clients of round `rnd`, in their original order."""
    n = len(clients)
    k = sample_size(n, fraction, count)
    if k >= n:
        return list(clients)
    rng = random.Random(f"estuary/sample/{seed}/{rnd}")  # str seeds hash the same in every process
    chosen = set(rng.sample(range(n), k))
    return [c for i, c in enumerate(clients) if i in chosen]
