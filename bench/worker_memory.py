"""What a client worker keeps resident after a task, with and without handing freed heap back (malloc_trim).

    python -m bench.worker_memory [--job jobs/fdkt-agnews.yaml] [--clients c001 c003] [--rounds 1] [--set K=V ...]

One `ClientWorker` in this process (no Ray: the `run_task` a pool worker serves) runs the job's method for each
client and round, in order, as one pool worker would serve them. Around the worker's `release_after()` (it
releases after any task over a second) it records resident memory just before the release (what the worker
would keep without it, the baseline) and just after (what it keeps), and the process's peak so far. Default:
FDKT on AG News, whose first task per client DP-trains a generator (minutes each on this machine). Writes
bench/results/worker_memory.json.
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Any

from bench.common import rss_mib, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", default="jobs/fdkt-agnews.yaml")
    ap.add_argument("--clients", nargs="+", default=["c001", "c003"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a job override, as estuary run's")
    args = ap.parse_args()

    import estuary.client.worker as worker_mod
    from estuary.platform.loading import load_config
    from estuary.platform.runner import resolve_models
    from estuary.registry import get, params_for

    cfg = load_config(args.job, args.overrides)
    paths, _ = resolve_models(cfg)
    strategy = get(cfg.method)
    planner = strategy(cfg, params_for(strategy, cfg.params_of(cfg.method)))  # the driver's copy: it plans tasks
    worker = worker_mod.ClientWorker(cfg.model_dump_json(), paths, "bench", torch_threads=1)
    release = worker_mod.release_after
    seen: list[tuple[float, float]] = []

    def measured_release(task_seconds: float) -> bool:
        before = rss_mib()
        released = release(task_seconds)
        seen.append((before, rss_mib()))
        return released

    worker_mod.release_after = measured_release  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []
    states: dict[str, Any] = {}
    start_mib = rss_mib()
    for rnd in range(1, args.rounds + 1):
        for cid in args.clients:
            task = planner.configure_round(rnd, [cid])[0]
            t0 = time.perf_counter()
            _, states[cid] = worker.run_task(strategy, task, states.get(cid))
            before, after = seen[-1]
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append({"round": rnd, "client": cid, "kind": task.kind, "wall_s": round(time.perf_counter() - t0, 1),
                         "rss_without_release_mib": round(before), "rss_after_release_mib": round(after),
                         "peak_rss_mib": round(peak), "kept_ratio": round(after / before, 3)})
            print(f"round {rnd} {cid} ({task.kind}, {rows[-1]['wall_s']} s): resident {before:,.0f} MiB without "
                  f"release, {after:,.0f} MiB after (x{after / before:.2f}); peak so far {peak:,.0f} MiB", flush=True)
    write_result("worker_memory", {"job": args.job, "overrides": args.overrides, "method": cfg.method,
                                   "rss_at_start_mib": round(start_mib), "tasks": rows})


if __name__ == "__main__":
    main()
