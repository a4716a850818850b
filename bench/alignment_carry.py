"""How well FedMKT's token alignment carries one model's knowledge onto another's tokens, on real texts.

    python -m bench.alignment_carry [--models qwen2.5-0.5b smollm2-135m gemma3-270m] [--task sst2] [--texts 200]

For every ordered pair of the first model (the server LLM) and each other one, both ways: over the positions
that `position_map` pairs, the share where the source's actual next token, through the cached MinED mapping
(`cached_vocab_mapping`, as runs use it), is the destination's actual next token
(`estuary.knowledge.alignment.next_token_carry`), beside the vocabulary's exact share. The texts are the task's
evaluation examples as the models read them (prompt + label word). Results: bench/results/alignment_carry.json.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "smollm2-135m", "gemma3-270m"])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--texts", type=int, default=200)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bench.common import write_result
    from estuary.data import get_task, load_splits
    from estuary.knowledge.alignment import cached_vocab_mapping, next_token_carry
    from estuary.models import resolve_model

    task = get_task(args.task)
    texts = [task.prompt(ex) + task.completion(ex) for ex in load_splits(args.task, seed=0).eval[: args.texts]]
    toks = {m: AutoTokenizer.from_pretrained(resolve_model(m)) for m in args.models}
    llm, rows = args.models[0], []
    for other in args.models[1:]:
        for src, dst in ((llm, other), (other, llm)):
            t0 = time.perf_counter()
            mapping = cached_vocab_mapping(toks[src], toks[dst])
            hits, total = next_token_carry(toks[src], toks[dst], texts, mapping)
            row = {"pair": f"{src} -> {dst}", "vocab_exact": round(mapping.exact_share, 4), "positions": total,
                   "next_token_carried": round(hits / total, 4) if total else None,
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"{row['pair']:>32}: next token carried {hits}/{total} = {row['next_token_carried']}, "
                  f"vocabulary exact {row['vocab_exact']}", flush=True)
    write_result("alignment_carry", {"task": args.task, "texts": len(texts), "pairs": rows})


if __name__ == "__main__":
    main()
