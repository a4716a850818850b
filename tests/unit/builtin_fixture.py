"""The built-in tasks' splits and client shards, summarised as hashes (tests/unit/data/builtin_splits.json).

The fixture was written by the loaders before task cards existed (`python -m tests.unit.builtin_fixture
--write`); test_builtin_regression.py compares today's loader against it, so earlier results stay comparable.
Regenerate it only for a deliberate change of the built-in splits, and say so in the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).parent / "data" / "builtin_splits.json"
TASK_NAMES = ("sst2", "agnews", "rte", "yelp", "yelp-gen", "e2e")
SEEDS = (0, 1, 7)
# (task, seed, train_size, eval_size, test_size): the subsampling every job uses on top of the splits
SUBSAMPLES = (("sst2", 0, 100, 40, 200), ("agnews", 3, 200, 40, 200), ("e2e", 0, 300, None, 200),
              ("yelp-gen", 1, 250, 50, 100))
# data sections of jobs, with (clients, seed): the shards every client gets
FEDERATED: tuple[tuple[dict[str, Any], int, int], ...] = (
    ({"task": "sst2", "partition": "dirichlet", "alpha": 0.5, "train_size": 400}, 4, 0),
    ({"task": "agnews", "partition": "iid", "train_size": 300, "test_size": 100}, 3, 1),
    ({"task": "rte", "partition": "dirichlet", "alpha": 1.0}, 5, 0),
    ({"task": "yelp", "partition": "domain", "train_size": 600}, 6, 2),
    ({"task": "yelp-gen", "partition": "domain", "test_size": 50}, 12, 0),
    ({"task": "e2e", "partition": "iid", "train_size": 500}, 4, 0),
)


def _digest(rows: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def summarize(examples: Sequence[Any]) -> dict[str, Any]:
    """Size, first uids, a hash of the uid list and one of every example's fields."""
    return {
        "n": len(examples),
        "head": [e.uid for e in examples[:3]],
        "uids": _digest([e.uid for e in examples]),
        "rows": _digest([[e.uid, e.text, e.text_pair, e.label, e.target, e.domain] for e in examples]),
    }


def compute(root: Path) -> dict[str, Any]:
    from estuary.data import load_splits

    out: dict[str, Any] = {"splits": {}, "subsamples": {}, "federated": {}}
    for name in TASK_NAMES:
        for seed in SEEDS:
            s = load_splits(name, root=root, seed=seed)
            out["splits"][f"{name}/{seed}"] = {k: summarize(getattr(s, k)) for k in ("train", "eval", "test")}
    for name, seed, tr, ev, te in SUBSAMPLES:
        s = load_splits(name, root=root, seed=seed, train_size=tr, eval_size=ev, test_size=te)
        out["subsamples"][f"{name}/{seed}/{tr}/{ev}/{te}"] = {
            k: summarize(getattr(s, k)) for k in ("train", "eval", "test")}
    out["federated"] = compute_federated(root)
    return out


def compute_federated(root: Path) -> dict[str, Any]:
    from estuary.data.federated import build_federated_data

    out: dict[str, Any] = {}
    for section, clients, seed in FEDERATED:
        data = build_federated_data(json.dumps({**section, "root": str(root)}), clients, seed)
        key = f"{section['task']}/{section['partition']}/{clients}/{seed}"
        out[key] = {"test": summarize(data.test),
                    **{cid: {"train": summarize(cd.train), "eval": summarize(cd.eval)}
                       for cid, cd in data.clients.items()}}
    return out


def main() -> None:
    from estuary.data import find_data_root

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help=f"write {FIXTURE} (else print a diff count)")
    args = ap.parse_args()
    now = compute(find_data_root())
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
    else:
        old = json.loads(FIXTURE.read_text())
        print("same" if old == now else "DIFFERENT")


if __name__ == "__main__":
    main()
