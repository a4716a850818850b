"""Round overhead of the client pool with no-op clients, against raw Ray actor calls in the same run, and the
cost of a real round with hundreds of clients doing small SLM work.

    python -m bench.round_overhead [--clients 100 500 1000] [--rounds 4] [--workers 2] \
        [--real-clients 500] [--real-model tiny|smollm2-135m|PATH] [--real-rounds 2]

For each client count: pooled mode on K workers, the `noop` strategy (no model is loaded), R rounds.
Reports milliseconds per client per round (steady state: rounds after the first), the driver's
resident memory per simulated client, the slope of round time over client count (ms per added client),
and the ratio to a baseline measured in the same run: the same number of calls on K bare actors through
`ray.wait`, with no Estuary in between. `--real-clients N` (0 = skip) then runs the `standalone` method with
N clients, each doing one LoRA step (batch 2, 32 tokens) on the model given (`tiny`: a 2-layer random Llama
built on the fly, the test suite's), and reports each round's wall time, ms per client and driver memory, beside
a plain loop over the same clients' steps (K processes of one thread, the worker's own task code, states in a
dict, no Ray, records or checkpoints): `overhead_vs_plain_loop` is Estuary's round over the plain one, minus 1
(issue 31's goal: at most 0.2 in the steady round).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray

from bench.common import rss_mib, write_result
from estuary.platform.loading import load_config
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
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--payload-floats", type=int, default=0, help="per-client state size (floats)")
    ap.add_argument("--real-clients", type=int, default=500, help="clients of the real round (0 = skip it)")
    ap.add_argument("--real-model", default="tiny", help="tiny (built on the fly), an alias or a model folder")
    ap.add_argument("--real-rounds", type=int, default=2)
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
    slope = rss_slope = None
    if len(rows) > 1:
        xs = [r["clients"] for r in rows]
        slope = statistics.linear_regression(xs, [r["round_ms_median"] for r in rows]).slope
        rss_slope = statistics.linear_regression(xs, [r["driver_rss_delta_mib"] for r in rows]).slope
    real = real_round(args, out_dir) if args.real_clients else None
    ray.shutdown()
    write_result("round_overhead", {"workers": args.workers, "rounds": args.rounds,
                                    "slope_ms_per_added_client": round(slope, 3) if slope else None,
                                    "driver_kib_per_added_client": round(rss_slope * 1024, 2) if rss_slope else None,
                                    "rows": rows, "real_round": real})


def real_round(args: argparse.Namespace, out_dir: Path) -> dict:
    """`standalone` with N clients, one small LoRA step each, on K pooled workers: the cost of a real round."""
    model = args.real_model
    if model == "tiny":
        from tests.conftest import build_tiny_model

        from estuary.data import find_data_root

        lines = (find_data_root() / "sst2" / "train.txt").read_text().splitlines()
        model = str(build_tiny_model(out_dir / "tiny-llama", [ln[2:] for ln in lines]))
    n = args.real_clients
    gc.collect()
    rss0 = rss_mib()
    job = {
        "name": f"real{n}", "method": "standalone", "baselines": [], "rounds": args.real_rounds,
        "models": {"client": model},
        "data": {"task": "sst2", "partition": "iid", "min_client_size": 4, "client_eval_max": 4, "test_size": 20},
        "clients": {"count": n, "pool_size": args.workers},
        "training": {"steps": 1, "batch_size": 2, "max_length": 32},
        "evaluation": {"server": False, "global_test": False, "every": 1_000_000},
        "output": {"dir": str(out_dir), "run_id": f"real{n}", "plots": False, "keep_checkpoints": 1},
    }
    t0 = time.perf_counter()
    with round_spans() as spans:
        run_dir = run_experiment(load_config(base=job), show_progress=False)
    total = time.perf_counter() - t0
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    rss = round(rss_mib() - rss0, 1)
    full = [spans[r["round"]] for r in rounds]  # the round with its records and checkpoint
    plain = plain_rounds(job, args.workers)
    overhead = [round(f / p - 1, 3) for f, p in zip(full, plain, strict=True)]
    out = {
        "clients": n, "model": args.real_model, "workers": args.workers, "steps_per_client": 1,
        "round_s": [round(f, 3) for f in full],
        "ms_per_client_round": [round(f * 1000 / n, 1) for f in full],
        "records_and_checkpoint_s": [round(f - r["wall_s"], 3) for f, r in zip(full, rounds, strict=True)],
        "phases_s": [r.get("phases_s") for r in rounds],
        "plain_loop_round_s": [round(p, 3) for p in plain],
        "overhead_vs_plain_loop": overhead,
        "steady_overhead_vs_plain_loop": overhead[-1],
        "clients_ok": [r["clients_ok"] for r in rounds],
        "pool_startup_s": summary.get("pool", {}).get("startup_s"),
        "run_total_s": round(total, 1),
        "driver_rss_delta_mib": rss,
    }
    print(json.dumps({"real_round": out}))
    return out


@contextmanager
def round_spans() -> Iterator[dict[int, float]]:
    """Seconds of each round of the run inside, from the strategy's first hook to the end of the run context's
    `end_round` (rounds.jsonl's wall_s ends before the round's records and checkpoint)."""
    from estuary.platform.run_context import RunContext
    from estuary.platform.strategy import Strategy

    starts: dict[int, float] = {}
    spans: dict[int, float] = {}
    prepare, end = Strategy.prepare_round, RunContext.end_round

    def timed_prepare(self: Any, rnd: int, server: Any) -> Any:
        starts[rnd] = time.perf_counter()
        return prepare(self, rnd, server)

    def timed_end(self: Any, strategy: Any, rnd: int, *a: Any, **k: Any) -> None:
        end(self, strategy, rnd, *a, **k)
        spans[rnd] = time.perf_counter() - starts[rnd]

    Strategy.prepare_round, RunContext.end_round = timed_prepare, timed_end  # type: ignore[method-assign]
    try:
        yield spans
    finally:
        Strategy.prepare_round, RunContext.end_round = prepare, end  # type: ignore[method-assign]


def plain_rounds(job: dict, workers: int) -> list[float]:
    """The real round's client work with no orchestration: `workers` processes (one thread each, as the pool's
    workers), each a plain loop over its share of the clients: the worker's own task code (load the client's
    adapter, step, export it), states kept in a dict in the process; no Ray, records or checkpoints. Per round,
    the slowest process's seconds."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        shares = list(pool.map(plain_share, [job] * workers, range(workers), [workers] * workers))
    return [max(share[i] for share in shares) for i in range(len(shares[0]))]


def plain_share(job: dict, k: int, workers: int) -> list[float]:
    """One plain process: clients k, k + workers, ... of every round, in order; seconds per round."""
    import torch

    from estuary.client.worker import ClientWorker
    from estuary.platform.runner import resolve_models
    from estuary.registry import build_params, get

    torch.set_num_threads(1)
    cfg = load_config(base=job)
    paths, _ = resolve_models(cfg)
    cls = get(cfg.method)
    strategy = cls(cfg, build_params(cfg.method, cfg.params_of(cfg.method)))
    worker = ClientWorker(cfg.model_dump_json(), paths, f"plain-{k}", 1)
    states: dict[str, object] = {}
    seconds = []
    for rnd in range(1, cfg.rounds + 1):
        tasks = strategy.configure_round(rnd, strategy.select_clients(rnd, strategy.client_ids()))[k::workers]
        t0 = time.perf_counter()
        for task in tasks:
            _egress, states[task.client_id] = ClientWorker.run_task(worker, cls, task, states.get(task.client_id))
        seconds.append(time.perf_counter() - t0)
    return seconds


if __name__ == "__main__":
    main()
