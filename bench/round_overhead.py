"""Round overhead of the client pool with no-op clients, against raw Ray actor calls in the same run.

    python -m bench.round_overhead [--clients 50 200 500] [--rounds 4] [--workers 2]

For each client count: pooled mode on K workers, the `noop` strategy (no model is loaded), R rounds.
Reports milliseconds per client per round (steady state: rounds after the first), the driver's
resident memory per simulated client, and the ratio to a baseline measured in the same run: the same
number of calls on K bare actors through `ray.wait`, with no Estuary in between.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from bench.common import rss_mib, write_result
from estuary.platform.config import load_config
from estuary.platform.runner import run_experiment


@ray.remote(num_cpus=1)
class Bare:
    def call(self, state: object) -> tuple[dict, object]:
        return {"ok": 1}, state


def bare_round_ms(workers: list, n: int, inflight: int) -> float:
    t0 = time.perf_counter()
    pending: list = []
    sent = 0
    per = [0] * len(workers)
    owner: dict = {}
    while sent < n or pending:
        while sent < n and min(per) < inflight:
            w = per.index(min(per))
            ref, _state = workers[w].call.options(num_returns=2).remote(None)
            owner[ref] = w
            per[w] += 1
            pending.append(ref)
            sent += 1
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            ray.get(ref)
            per[owner.pop(ref)] -= 1
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[50, 200, 500])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--payload-floats", type=int, default=0, help="per-client state size (floats)")
    args = ap.parse_args()

    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    out_dir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    rows = []
    for n in [10, *args.clients]:  # the first (10 clients) warms imports and caches; not reported
        gc.collect()
        rss0 = rss_mib()
        job = {
            "name": f"noop{n}", "method": "noop", "baselines": [], "rounds": args.rounds,
            "method_params": {"payload_floats": args.payload_floats},
            "data": {"task": "sst2", "partition": "iid", "min_client_size": 2},
            "clients": {"count": n, "pool_size": args.workers},
            "evaluation": {"server": False},
            "output": {"dir": str(out_dir), "run_id": f"n{n}", "plots": False, "keep_checkpoints": 1},
        }
        run_dir = run_experiment(load_config(base=job), show_progress=False)
        rss1 = rss_mib()
        rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
        steady = [r["wall_s"] * 1000 for r in rounds[1:]] or [rounds[0]["wall_s"] * 1000]
        est_ms = statistics.median(steady)
        bare = [Bare.remote() for _ in range(args.workers)]
        ray.get([b.call.options(num_returns=2).remote(None)[0] for b in bare])
        bare_ms = statistics.median(bare_round_ms(bare, n, 2) for _ in range(3))
        for b in bare:
            ray.kill(b)
        if n == 10:
            continue
        row = {
            "clients": n,
            "round_ms_median": round(est_ms, 1),
            "ms_per_client_round": round(est_ms / n, 3),
            "bare_ray_ms_per_client_round": round(bare_ms / n, 3),
            "ratio_vs_bare_ray": round(est_ms / bare_ms, 2),
            "first_round_ms": round(rounds[0]["wall_s"] * 1000, 1),
            "driver_rss_delta_mib": round(rss1 - rss0, 1),
            "driver_kib_per_client": round((rss1 - rss0) * 1024 / n, 2),
        }
        rows.append(row)
        print(json.dumps(row))
    slope = None
    if len(rows) > 1:
        xs = [r["clients"] for r in rows]
        ys = [r["round_ms_median"] for r in rows]
        slope = statistics.linear_regression(xs, ys).slope
    ray.shutdown()
    write_result("round_overhead", {"workers": args.workers, "rounds": args.rounds,
                                    "slope_ms_per_added_client": round(slope, 3) if slope else None,
                                    "rows": rows})


if __name__ == "__main__":
    main()
