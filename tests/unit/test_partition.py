"""Federated partitions: coverage, determinism, skew and domain rules (fast: no Ray, no models)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from estuary.data import Example, client_splits, label_entropy, label_histogram, load_splits, partition
from estuary.errors import DataError


def _toy(n: int, num_labels: int = 4, domains: tuple[str, ...] = ()) -> list[Example]:
    return [
        Example(
            text=f"x{i}",
            label=i % num_labels,
            domain=domains[i % len(domains)] if domains else None,
            uid=f"toy/train/{i}",
        )
        for i in range(n)
    ]


def _assert_cover(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n))  # every index exactly once


@pytest.mark.parametrize("seed", [0, 1, 17])
@pytest.mark.parametrize("k", [1, 2, 7, 10, 13])
@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "domain"])
def test_every_index_exactly_once(scheme: str, k: int, seed: int) -> None:
    ex = _toy(503, domains=("a", "b", "c", "d", "e", "f", "g", "h", "i", "j"))
    parts = partition(ex, k, scheme, alpha=0.3, seed=seed)  # type: ignore[arg-type]
    assert len(parts) == k
    _assert_cover(parts, len(ex))
    assert all(len(p) >= 1 for p in parts)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "domain"])
def test_deterministic_given_seed(scheme: str) -> None:
    ex = _toy(400, domains=("a", "b", "c"))
    a = partition(ex, 6, scheme, seed=3)  # type: ignore[arg-type]
    b = partition(ex, 6, scheme, seed=3)  # type: ignore[arg-type]
    c = partition(ex, 6, scheme, seed=4)  # type: ignore[arg-type]
    assert a == b
    assert a != c


def test_iid_is_even() -> None:
    parts = partition(_toy(103), 10, "iid", seed=0)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    ex = _toy(4000, num_labels=4)

    def mean_entropy(alpha: float) -> float:
        vals = []
        for seed in range(5):
            for p in partition(ex, 10, "dirichlet", alpha=alpha, seed=seed):
                vals.append(label_entropy([ex[i] for i in p], 4))
        return float(np.mean(vals))

    low, high = mean_entropy(0.1), mean_entropy(100.0)
    assert low < high - 0.5
    assert high > 0.95 * np.log(4)


def test_dirichlet_min_size_respected_and_impossible_is_error() -> None:
    ex = _toy(300, num_labels=3)
    parts = partition(ex, 5, "dirichlet", alpha=0.5, seed=0, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(DataError, match="alpha") as exc:
        partition(_toy(60, num_labels=3), 20, "dirichlet", alpha=0.01, seed=0, min_size=3)
    assert "\n" not in str(exc.value)


def test_domain_one_category_per_client_on_yelp() -> None:
    train = load_splits("yelp", seed=0).train
    domains = {e.domain for e in train}
    parts = partition(train, len(domains), "domain", seed=0)
    _assert_cover(parts, len(train))
    per_client = [{train[i].domain for i in p} for p in parts]
    assert all(len(d) == 1 for d in per_client)
    assert set().union(*per_client) == domains
    # largest domain first
    assert per_client[0] == {"Restaurants"}


def test_domain_merge_and_split_rules() -> None:
    ex = _toy(600, domains=("big",) * 4 + ("mid", "small"))  # big 400, mid 100, small 100
    merged = partition(ex, 2, "domain", seed=0)
    doms = [{ex[i].domain for i in p} for p in merged]
    assert doms == [{"big"}, {"mid", "small"}]  # whole domains, balanced greedily
    split = partition(ex, 5, "domain", seed=0)
    doms = [{ex[i].domain for i in p} for p in split]
    assert all(len(d) == 1 for d in doms)  # a client never mixes domains when splitting
    assert Counter(d.pop() for d in doms) == {"big": 3, "mid": 1, "small": 1}
    _assert_cover(split, len(ex))


def test_domain_requires_domains() -> None:
    with pytest.raises(DataError, match="domain"):
        partition(_toy(10), 2, "domain")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_clients": 0, "scheme": "iid"}, "num_clients"),
        ({"num_clients": -2, "scheme": "dirichlet"}, "num_clients"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
        ({"num_clients": 2, "scheme": "zipf"}, "scheme"),
        ({"num_clients": 50, "scheme": "iid"}, "num_clients"),
    ],
)
def test_bad_inputs_are_one_line_errors(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as exc:
        partition(_toy(20), **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)


def test_dirichlet_needs_labels() -> None:
    ex = [Example(text="a", uid=f"g/{i}") for i in range(10)]
    with pytest.raises(DataError, match="iid"):
        partition(ex, 2, "dirichlet")


def test_client_splits() -> None:
    ex = _toy(100)
    idx = list(range(10, 40))
    train, evals = client_splits(ex, idx, 0.2, seed=1)
    assert len(evals) == 6 and len(train) == 24
    assert {e.uid for e in train} | {e.uid for e in evals} == {ex[i].uid for i in idx}
    assert not ({e.uid for e in train} & {e.uid for e in evals})
    assert client_splits(ex, idx, 0.2, seed=1) == (train, evals)
    # tiny shards still get one eval example, but never lose all training data
    assert tuple(map(len, client_splits(ex, [1, 2], 0.01, seed=0))) == (1, 1)
    assert tuple(map(len, client_splits(ex, [3], 0.5, seed=0))) == (1, 0)
    assert tuple(map(len, client_splits(ex, [1, 2, 3], 0.0, seed=0))) == (3, 0)
    with pytest.raises(DataError, match="eval_fraction"):
        client_splits(ex, idx, 1.0, seed=0)


def test_label_histogram() -> None:
    ex = _toy(10, num_labels=3)
    assert label_histogram(ex, 3) == [4, 3, 3]
    assert label_histogram([], 2) == [0, 0]
    with pytest.raises(DataError, match="label"):
        label_histogram(ex, 2)
    assert label_entropy([ex[0], ex[3]], 3) == 0.0
