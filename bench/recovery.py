"""Recovery after a worker kill: how long until a killed client worker serves again, and what a kill mid-round
costs the round, against the same round without a kill (same run, same pool).

    python -m bench.recovery [--clients 200] [--workers 2] [--repeats 3] [--sleep-s 0.02]

Pooled mode, the `noop` strategy with a small sleep per task (so tasks are in flight when the kill lands).
- restart_s: `ray.kill` of an idle worker (Ray restarts it) until `ready()` answers from a new process;
- round_with_kill_s vs round_s: a round in which one worker is killed after the first result arrives (its
  in-flight tasks are resubmitted by the pool; the restarted worker starts cold), against a clean round of
  warm workers; both report task attempts. recovery_cost_s is the difference of the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import ray

from bench.common import write_result
from estuary.client.pool import ClientPool
from estuary.platform.loading import load_config
from estuary.strategies.noop import Noop
from estuary.wire import ClientTask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sleep-s", type=float, default=0.02, help="per-task sleep of the noop clients")
    args = ap.parse_args()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    job = {
        "method": "noop", "baselines": [], "method_params": {"sleep_s": args.sleep_s},
        "data": {"task": "sst2", "partition": "iid", "min_client_size": 2},
        "clients": {"count": args.clients, "pool_size": args.workers, "max_retries": 20},
        "evaluation": {"server": False}, "output": {"dir": tempfile.mkdtemp()},
    }
    cfg = load_config(base=job)
    pool = ClientPool(cfg, {})
    pool.wait_ready()
    strategy = Noop(cfg)
    ids = strategy.client_ids()
    rnd = 0

    def one_round(kill: bool) -> tuple[float, int, int]:
        nonlocal rnd
        rnd += 1
        done: list[str] = []

        def on_result(eg: object) -> None:
            if kill and not done:
                ray.kill(pool.workers[0], no_restart=False)
                done.append("killed")

        tasks = [ClientTask(cid, rnd, evaluate=False) for cid in ids]
        t0 = time.perf_counter()
        outcome = pool.run(Noop, tasks, on_result=on_result)
        return time.perf_counter() - t0, outcome.attempts, len(outcome.failures)

    one_round(False)  # warm-up: data shards built in every worker
    restarts, clean, killed = [], [], []
    for _ in range(args.repeats):
        old_pid = ray.get(pool.workers[0].ready.remote())["pid"]
        t0 = time.perf_counter()
        ray.kill(pool.workers[0], no_restart=False)
        deadline = time.time() + 120
        while time.time() < deadline:  # calls fail while the actor is dead or restarting; ray.kill is
            try:  # asynchronous, so the old process may still answer: wait for a new pid
                if ray.get(pool.workers[0].ready.remote(), timeout=30)["pid"] != old_pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
            time.sleep(0.05)
        restarts.append(time.perf_counter() - t0)
        one_round(False)  # the restarted worker rebuilds its caches (data shards): not part of the clean round
        clean.append(one_round(False))
        killed.append(one_round(True))
    pool.shutdown()
    ray.shutdown()
    result = {
        "clients": args.clients, "workers": args.workers, "sleep_s": args.sleep_s, "repeats": args.repeats,
        "restart_s_median": round(statistics.median(restarts), 2),
        "restart_s": [round(x, 2) for x in restarts],
        "round_s_median": round(statistics.median(r[0] for r in clean), 2),
        "round_with_kill_s_median": round(statistics.median(r[0] for r in killed), 2),
        "recovery_cost_s": round(statistics.median(r[0] for r in killed) - statistics.median(r[0] for r in clean), 2),
        "attempts_clean": [r[1] for r in clean], "attempts_with_kill": [r[1] for r in killed],
        "failures_with_kill": [r[2] for r in killed],
    }
    print(json.dumps(result))
    write_result("recovery", result)


if __name__ == "__main__":
    main()
