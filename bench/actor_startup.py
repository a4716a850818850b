"""Dedicated mode start-up: actors per second for N clients (one actor each), against bare Ray actors
started in the same run.

    python -m bench.actor_startup [--clients 20 50]

Estuary's worker imports torch and the platform in its constructor (the cost a real client pays);
the baseline actor imports nothing. Each actor gets num_cpus = cluster CPUs / N so all of them fit.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray

from bench.common import write_result
from estuary.client.pool import ClientPool
from estuary.platform.loading import load_config


@ray.remote
class Empty:
    def ready(self) -> int:
        return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    for n in args.clients:
        share = args.cpus / n
        t0 = time.perf_counter()
        bare = [Empty.options(num_cpus=share).remote() for _ in range(n)]
        ray.get([b.ready.remote() for b in bare])
        bare_s = time.perf_counter() - t0
        for b in bare:
            ray.kill(b)
        time.sleep(2)
        job = {
            "method": "noop", "baselines": [], "evaluation": {"server": False},
            "clients": {"count": n, "mode": "dedicated", "resources": {"num_cpus": share}},
            "output": {"dir": tempfile.mkdtemp()},
        }
        t0 = time.perf_counter()
        pool = ClientPool(load_config(base=job), {})
        pool.wait_ready()
        est_s = time.perf_counter() - t0
        pool.shutdown()
        time.sleep(2)
        row = {
            "clients": n,
            "estuary_actors_per_s": round(n / est_s, 2),
            "estuary_startup_s": round(est_s, 2),
            "bare_actors_per_s": round(n / bare_s, 2),
            "ratio_estuary_vs_bare_time": round(est_s / bare_s, 2),
        }
        rows.append(row)
        print(json.dumps(row))
    ray.shutdown()
    write_result("actor_startup", {"cpus": args.cpus, "rows": rows})


if __name__ == "__main__":
    main()
