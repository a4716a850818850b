"""Split a data set over federated clients: IID, Dirichlet label skew, or by domain.

Every function is deterministic given its seed and returns positions into the ``examples``
sequence it was given (each client's list sorted ascending).

Domain rule (``scheme="domain"``), with D distinct ``Example.domain`` values and K clients:

* K == D: one domain per client, domains ordered by size (largest first, ties by name).
* K <  D: domains are merged: taken largest first, each goes to the client with the fewest
  examples so far (ties: lowest client id), so every client holds at least one whole domain.
* K >  D: big domains are split: every domain starts with one shard, and each spare client goes
  to the domain with the most examples per shard; a domain's shuffled examples are then cut into
  near-equal shards. Clients are ordered domain by domain (largest domain first).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np

from estuary.errors import DataError

from .task import Example

Scheme = Literal["iid", "dirichlet", "domain"]
SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "domain")
DIRICHLET_MAX_TRIES = 1000


def partition(
    examples: Sequence[Example],
    num_clients: int,
    scheme: Scheme,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[list[int]]:
    """Indices of ``examples`` held by each of ``num_clients`` clients; every index exactly once."""
    n = len(examples)
    if isinstance(num_clients, bool) or not isinstance(num_clients, int | np.integer) or num_clients < 1:
        raise DataError(f"partition.num_clients={num_clients!r} must be an integer >= 1")
    if min_size < 0:
        raise DataError(f"partition.min_size={min_size} must be >= 0")
    if n < num_clients * min_size:
        raise DataError(
            f"{n} examples cannot give {num_clients} clients >= {min_size} each; "
            "lower partition.num_clients or min_size, or load more data"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        shards = [list(map(int, s)) for s in np.array_split(rng.permutation(n), num_clients)]
    elif scheme == "dirichlet":
        shards = _dirichlet(examples, num_clients, alpha, rng, min_size)
    elif scheme == "domain":
        shards = _domain(examples, num_clients, rng)
    else:
        raise DataError(f"partition.scheme={scheme!r} is unknown; use one of: {', '.join(SCHEMES)}")
    small = [i for i, s in enumerate(shards) if len(s) < min_size]
    if small:
        raise DataError(
            f"partition scheme {scheme!r} left client {small[0]} with {len(shards[small[0]])} examples "
            f"(< min_size={min_size}); lower partition.num_clients or min_size"
        )
    return [sorted(s) for s in shards]


def _labels(examples: Sequence[Example], what: str) -> list[int]:
    labels = [e.label for e in examples]
    if any(y is None for y in labels):
        raise DataError(
            f"{what} needs labelled examples; use partition.scheme 'iid' or 'domain' for this task"
        )
    return [int(y) for y in labels if y is not None]


def _dirichlet(
    examples: Sequence[Example], k: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[list[int]]:
    """Label skew (Hsu et al. 2019; NIID-Bench recipe): each class is spread over clients with
    proportions drawn from Dirichlet(alpha), zeroing clients already above n/k; redrawn until
    every client has ``min_size`` examples."""
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise DataError(f"partition.alpha={alpha!r} must be a finite number > 0 (smaller = more label skew)")
    labels = np.asarray(_labels(examples, "partition scheme 'dirichlet'"))
    n = len(labels)
    classes = np.unique(labels)
    for _ in range(DIRICHLET_MAX_TRIES):
        shards: list[list[int]] = [[] for _ in range(k)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(k, alpha))
            p = p * np.array([len(s) < n / k for s in shards])
            total = p.sum()
            p = p / total if total > 0 else np.full(k, 1.0 / k)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for shard, part in zip(shards, np.split(idx, cuts), strict=True):
                shard.extend(int(i) for i in part)
        if min(len(s) for s in shards) >= min_size:
            return shards
    raise DataError(
        f"dirichlet partition gave some of {k} clients < {min_size} examples in {DIRICHLET_MAX_TRIES} tries "
        f"(alpha={alpha}, {n} examples); raise partition.alpha or lower partition.num_clients"
    )


def _domain(examples: Sequence[Example], k: int, rng: np.random.Generator) -> list[list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if e.domain is None:
            raise DataError(
                f"partition scheme 'domain' needs Example.domain but {e.uid or i} has none; "
                "use a task with domains (yelp, yelp-gen) or partition.scheme 'iid'/'dirichlet'"
            )
        groups[e.domain].append(i)
    order = sorted(groups, key=lambda d: (-len(groups[d]), d))
    if k <= len(order):
        shards: list[list[int]] = [[] for _ in range(k)]
        for d in order:
            target = min(range(k), key=lambda c: (len(shards[c]), c))
            shards[target].extend(groups[d])
        return shards
    counts = {d: 1 for d in order}
    for _ in range(k - len(order)):
        best = max(order, key=lambda d: (len(groups[d]) / counts[d], -order.index(d)))
        counts[best] += 1
    shards = []
    for d in order:
        idx = rng.permutation(groups[d])
        shards.extend([int(i) for i in part] for part in np.array_split(idx, counts[d]))
    return shards


def client_splits(
    examples: Sequence[Example], indices: Sequence[int], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """One client's shard ``indices`` of ``examples`` as (private train, private eval).

    Eval gets ``round(eval_fraction * len)`` examples, at least 1 when the shard has >= 2 and
    ``eval_fraction > 0``, and never the whole shard. Pass a per-client seed (e.g. seed + client id).
    """
    if not (0.0 <= eval_fraction < 1.0):
        raise DataError(
            f"eval_fraction={eval_fraction!r} must be in [0, 1); e.g. 0.1 keeps 10% for client eval"
        )
    n = len(indices)
    bad = [i for i in indices if not 0 <= i < len(examples)]
    if bad:
        raise DataError(
            f"client index {bad[0]} is outside the {len(examples)} examples; partition this data set again"
        )
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    eval_pos, train_pos = sorted(order[:n_eval]), sorted(order[n_eval:])
    return [examples[indices[p]] for p in train_pos], [examples[indices[p]] for p in eval_pos]


def label_histogram(examples: Sequence[Example], num_labels: int) -> list[int]:
    """Count of each label 0..num_labels-1 (unlabelled examples are not counted)."""
    counts = Counter(e.label for e in examples if e.label is not None)
    bad = [y for y in counts if not 0 <= y < num_labels]
    if bad:
        raise DataError(f"label {bad[0]} is outside 0..{num_labels - 1}; check the task's label_words")
    return [counts.get(y, 0) for y in range(num_labels)]


def label_entropy(examples: Sequence[Example], num_labels: int) -> float:
    """Shannon entropy (nats) of the label distribution; 0 for a single-label or empty shard."""
    hist = np.asarray(label_histogram(examples, num_labels), dtype=float)
    if hist.sum() == 0:
        return 0.0
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log(p)).sum())
