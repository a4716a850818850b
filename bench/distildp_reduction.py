"""DistilDP's KL weighting: the per-token mean against the reference code's batchmean (KL summed over a
sequence's positions and divided by the batch, `KLDivLoss(reduction="batchmean")`), on the same DP teachers'
synthetic text, each student from the same start.

    python -m bench.distildp_reduction [--job distildp-yelp] [--set KEY=VALUE ...]

In this process, without Ray: every client's teach task runs once (its DP teacher, its samples, the rows in
the student's tokenisation), the samples are pooled as the strategy pools them, and each client's student then
trains on the pool once per reduction (and once with hard labels only), every time from the client's state
after teaching, with the job's steps, λ and seed. Prints each student's test perplexity on the job's real
held-out text and writes bench/results/distildp_reduction.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.common import write_result
from estuary.platform.loading import load_config
from estuary.platform.runner import resolve_models

JOBS = Path(__file__).resolve().parents[1] / "jobs"
REDUCTIONS = ("token_mean", "batchmean")


def _worker(cfg: Any, paths: dict[str, str], name: str) -> Any:
    import torch

    from estuary.client.worker import ClientWorker

    return ClientWorker(cfg.model_dump_json(), paths, name, torch.get_num_threads())


def _run(worker: Any, strategy: Any, task: Any, state: Any) -> tuple[Any, Any]:
    from estuary.client.worker import ClientWorker

    egress, new_state = ClientWorker.run_task(worker, type(strategy), task, state)
    return egress, new_state


def measure(job: str, overrides: list[str]) -> dict[str, Any]:
    from estuary.data import get_task
    from estuary.registry import build_params, get
    from estuary.wire import RoundOutcome

    cfg = load_config(JOBS / f"{job}.yaml", overrides)
    paths, _ = resolve_models(cfg)
    cls = get("distildp")
    teach_cfg = cfg.model_copy(update={"method_params": {**cfg.method_params, "hard_label_baseline": False}})
    strategy = cls(teach_cfg, build_params("distildp", teach_cfg.method_params))
    worker = _worker(teach_cfg, paths, "teach")
    t0 = time.perf_counter()
    sent, states = {}, {}
    for task in strategy.configure_round(1, strategy.client_ids()):
        sent[task.client_id], states[task.client_id] = _run(worker, strategy, task, None)
    teach_s = time.perf_counter() - t0
    outcome = RoundOutcome(results=sent, failures={})
    server = SimpleNamespace(task=get_task(cfg.data.task), log=print, record=lambda name, rows: None)
    pool = strategy.server_step(1, strategy.aggregate(1, outcome), server)  # type: ignore[arg-type]
    followup = strategy.configure_followup(1, outcome)
    students: dict[str, dict[str, dict[str, float]]] = {}
    for reduction in REDUCTIONS:
        params = {**cfg.method_params, "kd_reduction": reduction, "hard_label_baseline": reduction == REDUCTIONS[0]}
        v_cfg = cfg.model_copy(update={"method_params": params})
        v_strategy = cls(v_cfg, build_params("distildp", params))
        v_worker = _worker(v_cfg, paths, reduction)
        t1 = time.perf_counter()
        for task in followup:
            egress, _ = _run(v_worker, v_strategy, task, copy.deepcopy(states[task.client_id]))
            students.setdefault(task.client_id, {})[reduction] = {
                **{k: v for k, v in egress.metrics.items() if k.startswith(("test/", "hard_labels/test/", "train/"))},
                "seconds": time.perf_counter() - t1}
            t1 = time.perf_counter()
    return {"job": job, "overrides": overrides, "pool": pool, "teach_s": round(teach_s, 1), "students": students}


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Mean test perplexity of the clients' students per reduction, and of the hard-label-only ones."""
    per = result["students"].values()
    out = {r: statistics.fmean(c[r]["test/perplexity"] for c in per) for r in REDUCTIONS}
    out["hard_labels"] = statistics.fmean(c[REDUCTIONS[0]]["hard_labels/test/perplexity"] for c in per)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="distildp-yelp")
    ap.add_argument("--set", action="append", default=[], help="job overrides (KEY=VALUE)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = measure(args.job, args.set)
    result["mean_test_perplexity"] = summary(result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    for name, ppl in result["mean_test_perplexity"].items():
        print(f"{name:>12}: test perplexity {ppl:.2f}")
    write_result("distildp_reduction", result)


if __name__ == "__main__":
    main()
