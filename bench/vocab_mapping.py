"""FedMKT's MinED vocabulary mapping: `estuary.knowledge.alignment.vocab_mapping` (rapidfuzz `cdist` per
group of texts sharing their head) against the per-token search it replaced (one `process.extractOne` per
inexact token over its group's texts), in one run.

    python -m bench.vocab_mapping [--models smollm2-135m gemma3-270m qwen2.5-0.5b] [--sample 2000]

For every ordered pair of the models' tokenizers: the full mapping's wall time; the per-token search's time on
`--sample` inexact source tokens (seeded) — or on all of them when there are fewer — and its time for the
whole vocabulary, measured when `--sample 0`, else scaled from the sample (marked `estimated`); and whether
both give the same destination token on every token both searched. Results: bench/results/vocab_mapping.json.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import numpy as np


def per_token_search(src: list[str], dst: list[str], queries: list[int]) -> dict[int, int]:
    """The replaced implementation: one extractOne per inexact source token over its group (`token_head`)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    from estuary.knowledge.alignment import token_head

    by_head: dict[str, list[int]] = {}
    for j, text in enumerate(dst):
        if text:
            by_head.setdefault(token_head(text), []).append(j)
    all_ids = list(range(len(dst)))
    out = {}
    for i in queries:
        text = src[i]
        pool = by_head.get(token_head(text), all_ids) if text else all_ids
        best = process.extractOne(text, [dst[k] for k in pool], scorer=Levenshtein.distance)
        out[i] = pool[best[2]] if best else 0
    return out


def measure(name_a: str, a: list[str], name_b: str, b: list[str], sample: int, seed: int) -> dict[str, Any]:
    from estuary.knowledge.alignment import vocab_mapping

    t0 = time.perf_counter()
    mapping = vocab_mapping(a, b)
    new_s = time.perf_counter() - t0
    inexact = [int(i) for i in np.flatnonzero(~mapping.exact)]
    queries = inexact if not sample or sample >= len(inexact) else sorted(random.Random(seed).sample(inexact, sample))
    t0 = time.perf_counter()
    old = per_token_search(a, b, queries)
    old_sample_s = time.perf_counter() - t0
    full = len(queries) == len(inexact)
    old_s = old_sample_s if full else old_sample_s * len(inexact) / max(1, len(queries))
    same = sum(old[i] == int(mapping.ids[i]) for i in queries)
    row = {"pair": f"{name_a} -> {name_b}", "source_tokens": len(a), "destination_tokens": len(b),
           "exact_share": round(mapping.exact_share, 4), "inexact_tokens": len(inexact),
           "cdist_s": round(new_s, 2), "per_token_s": round(old_s, 2), "per_token_estimated": not full,
           "per_token_searched": len(queries), "speedup": round(old_s / new_s, 1) if new_s else None,
           "same_destination": f"{same}/{len(queries)}"}
    print(f"{row['pair']:>32}: cdist {new_s:7.1f} s, per-token {old_s:8.1f} s{' (est.)' if not full else ''}, "
          f"{row['speedup']}x; same destination {row['same_destination']}; exact {mapping.exact_share:.3f}",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
    parser.add_argument("--sample", type=int, default=2000, help="inexact tokens the per-token search times "
                        "(0: all of them)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bench.common import write_result
    from estuary.knowledge.alignment import token_texts
    from estuary.models import resolve_model

    texts = {m: token_texts(AutoTokenizer.from_pretrained(resolve_model(m))) for m in args.models}
    rows = [measure(a, texts[a], b, texts[b], args.sample, args.seed)
            for a in args.models for b in args.models if a != b]
    write_result("vocab_mapping", {"sample": args.sample, "pairs": rows})


if __name__ == "__main__":
    main()
