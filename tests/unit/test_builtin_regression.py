"""The built-in tasks keep exactly the splits, example uids and client shards they had before task cards
(tests/unit/data/builtin_splits.json, written by the earlier loaders), so earlier results stay comparable."""

from __future__ import annotations

import json

import pytest

from estuary.data import find_data_root

from .builtin_fixture import FIXTURE, SEEDS, SUBSAMPLES, TASK_NAMES, compute_federated, summarize

EXPECTED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", TASK_NAMES)
def test_builtin_splits_unchanged(name: str) -> None:
    from estuary.data import load_splits

    for seed in SEEDS:
        s = load_splits(name, root=find_data_root(), seed=seed)
        got = {k: summarize(getattr(s, k)) for k in ("train", "eval", "test")}
        assert got == EXPECTED["splits"][f"{name}/{seed}"], (name, seed)


def test_builtin_subsamples_unchanged() -> None:
    from estuary.data import load_splits

    for name, seed, tr, ev, te in SUBSAMPLES:
        s = load_splits(name, root=find_data_root(), seed=seed, train_size=tr, eval_size=ev, test_size=te)
        got = {k: summarize(getattr(s, k)) for k in ("train", "eval", "test")}
        assert got == EXPECTED["subsamples"][f"{name}/{seed}/{tr}/{ev}/{te}"], name


def test_builtin_client_shards_unchanged() -> None:
    got = compute_federated(find_data_root())
    for key, want in EXPECTED["federated"].items():
        assert got[key] == want, key
