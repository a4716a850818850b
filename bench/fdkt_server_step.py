"""FDKT's server step, the reference procedure against Estuary's earlier defaults, on the same inputs and server.

    python -m bench.fdkt_server_step [--per-label 64] [--flip 0.25] [--repeats 2] [--job jobs/fdkt-sst2.yaml]

Inputs stand in for the clients' DP synthetic samples: `--per-label` real SST-2 training sentences of each label
(as many as the job's four clients send per round), a `--flip` share of them with the wrong label, so a judge's
quality shows: how many wrongly labelled samples it drops and how many right ones it keeps. The job's server
(Qwen2.5-0.5B on vLLM, its server section) is started once on a local 2-CPU Ray cluster. Then, alternating so
that a change in the machine's load hits both alike:

1. `server_step`: FDKT's whole server step (filter, judge, augmentation, the augmented filter) in two settings:
   `reference` (the job as it is: k-means over all labels, the per-sample eligible-samples judge, all-labels
   augmentation, the 10-word filter, augmented samples only) and `earlier` (per-label clusters, the per-cluster
   verbalizer judge, one-label prompts at T 0.9 / top-p 0.95, the full filter again, raw DP samples sent too):
   seconds, each stage's count, and what clients would receive (count, label mix);
2. `judges`: the first filter alone under each judge (per-sample eligible / classify, per-cluster classify over
   per-label clusters): seconds, kept right and wrong samples, unreadable answers.

Each generate call's prompts, prompt and output tokens and longest completion are counted: the cost in tokens
does not depend on the engine or the machine's load (`--set server.engine=reference --set server.dtype=float32`
runs the transformers engine, half vLLM's memory, where a shared machine kills the vLLM replica for memory).
Results: bench/results/fdkt_server_step.json; the load average before and after is recorded beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import tempfile
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import ray

from bench.common import write_result
from estuary.data import get_task, load_splits
from estuary.data.task import Example

EARLIER = {  # Estuary's defaults before the reference became the default (commit 0315db2)
    "filter": {"clustering": "per_label", "clusters_per_label": 4, "judge_examples": 5, "judge_scope": "per_cluster",
               "judge_mode": "classify"},
    "augment_prompt": "one_label", "filter_augmented": "full", "send_raw_synthetic": True,
    "augment": {"temperature": 0.9, "top_p": 0.95},
}
JUDGES = {
    "per_sample_eligible": {},
    "per_sample_classify": {"judge_mode": "classify"},
    "per_cluster_classify_per_label": EARLIER["filter"],
}


def inputs(per_label: int, flip: float, seed: int) -> tuple[list[Example], set[str]]:
    """`per_label` SST-2 training sentences of each label, a `flip` share relabelled; the flipped uids."""
    train = load_splits("sst2", seed=seed).train
    rng = random.Random(seed)
    out: list[Example] = []
    for label in (0, 1):
        texts = [ex.text for ex in train if ex.label == label][:per_label]
        out += [Example(text=t, label=label, uid=f"synthetic/c00{i % 4}/r1/{label}/{i}") for i, t in enumerate(texts)]
    flipped = set(rng.sample([ex.uid for ex in out], int(flip * len(out))))
    return [Example(text=ex.text, label=1 - int(ex.label or 0) if ex.uid in flipped else ex.label, uid=ex.uid)
            for ex in out], flipped


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def strategy_for(cfg: Any, params: dict[str, Any]) -> Any:
    from estuary.registry import build_params, get

    return get("fdkt")(cfg, build_params("fdkt", merge(cfg.params_of("fdkt"), params)))


def quality(kept_uids: set[str], examples: list[Example], flipped: set[str]) -> dict[str, int]:
    right = [ex.uid for ex in examples if ex.uid not in flipped]
    return {"right_in": len(right), "right_kept": sum(u in kept_uids for u in right),
            "wrong_in": len(flipped), "wrong_kept": sum(u in kept_uids for u in flipped)}


class Meter:
    """The served LLM, counting what each generate call costs: prompts, prompt and output tokens, and the
    longest completion (the decode steps the call needs at least)."""

    def __init__(self, llm: Any) -> None:
        self.llm, self.calls = llm, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    def generate(self, prompts: Any, params: Any = None, adapter: str | None = None, **kw: Any) -> Any:
        began = time.perf_counter()
        out = self.llm.generate(prompts, params, adapter=adapter, **kw)
        self.calls.append({"prompts": len(out), "seconds": round(time.perf_counter() - began, 1),
                           "prompt_tokens": sum(c.prompt_tokens for c in out),
                           "output_tokens": sum(c.output_tokens for c in out),
                           "longest": max((len(s.token_ids) for c in out for s in c.samples), default=0)})
        return out


def server_step(cfg: Any, name: str, llm: Any, examples: list[Example], flipped: set[str]) -> dict[str, Any]:
    strategy = strategy_for(cfg, EARLIER if name == "earlier" else {})
    records: dict[str, list[dict[str, Any]]] = {}
    llm = Meter(llm)
    server = SimpleNamespace(task=get_task(cfg.data.task), llm=llm, log=print,
                             record=lambda kind, rows: records.setdefault(kind, []).extend(rows))
    began = time.perf_counter()
    metrics = strategy.server_step(1, {"synthetic": examples, "refused": []}, server)
    seconds = time.perf_counter() - began
    transfer = strategy._transfer
    augmented = [ex for ex in transfer if ex.uid.startswith("augmented/")]
    return {"seconds": round(seconds, 1), "generate_calls": llm.calls, "metrics": metrics,
            "judge": quality({r["uid"] for r in records["synthetic"] if r["kept"]}, examples, flipped),
            "transfer": len(transfer), "transfer_labels": dict(Counter(int(ex.label or 0) for ex in transfer)),
            "augmented_labels": dict(Counter(int(ex.label or 0) for ex in augmented)),
            "augmented_examples": [(ex.label, ex.text) for ex in augmented[:6]],
            "judge_answers": [r.get("answer") for r in records.get("clusters", [])[:4]]}


def judge_only(cfg: Any, name: str, llm: Any, examples: list[Example], flipped: set[str]) -> dict[str, Any]:
    from estuary.knowledge import filter_examples

    strategy = strategy_for(cfg, {"filter": JUDGES[name]})
    began = time.perf_counter()
    task = get_task(cfg.data.task)
    res = filter_examples(examples, task, strategy.params.filter, embed=strategy._embed, seed=0,
                          **strategy._judges(llm, task))
    return {"seconds": round(time.perf_counter() - began, 1), "stats": res.stats,
            **quality({ex.uid for ex in res.kept}, examples, flipped)}


def main() -> None:
    from estuary.platform.loading import load_config
    from estuary.serve.launcher import start_server, stop_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default="jobs/fdkt-sst2.yaml")
    ap.add_argument("--per-label", type=int, default=64)
    ap.add_argument("--flip", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-judges", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a job field")
    args = ap.parse_args()
    with socket.socket() as sock:  # the job's HTTP port may be another server's on a shared machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = load_config(args.job, [f"server.port={port}", "server.app_name=bench-fdkt-llm", *args.set])
    examples, flipped = inputs(args.per_label, args.flip, cfg.seed)
    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"),
             logging_level=logging.WARNING, log_to_driver=bool(os.environ.get("BENCH_LOGS")))
    server_cfg = cfg.server_config()
    began = time.monotonic()
    llm = start_server(server_cfg)
    results: dict[str, Any] = {"server_start_s": round(time.monotonic() - began, 1), "server_step": {}, "judges": {}}
    try:
        for rep in range(args.repeats):
            for name in ("earlier", "reference") if rep % 2 == 0 else ("reference", "earlier"):
                res = server_step(cfg, name, llm, examples, flipped)
                results["server_step"].setdefault(name, []).append(res)
                print(f"server_step {name} #{rep}: {res['seconds']} s, judge {res['judge']}, transfer "
                      f"{res['transfer']} {res['transfer_labels']}", flush=True)
        if not args.skip_judges:
            for name in JUDGES:
                res = judge_only(cfg, name, llm, examples, flipped)
                results["judges"][name] = res
                print(f"judge {name}: {res}", flush=True)
    finally:
        stop_server(server_cfg.app_name)
        ray.shutdown()
    write_result("fdkt_server_step", {
        "engine": server_cfg.engine, "dtype": server_cfg.dtype,
        "what": "FDKT server step, reference defaults vs Estuary's earlier ones, same inputs and served LLM",
        "job": args.job, "per_label": args.per_label, "flip": args.flip, "server": server_cfg.model,
        "load_avg_before": [round(x, 1) for x in load_before],
        "load_avg_after": [round(x, 1) for x in os.getloadavg()], **results})


if __name__ == "__main__":
    main()
