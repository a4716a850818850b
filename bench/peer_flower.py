"""Estuary against Flower's simulation engine, one harness: no-op clients, per-round time, process-tree memory and
the time to the end of round 1, both engines measured in the same invocation.

    python -m bench.peer_flower [--clients 50,200,500] [--cpus 1,0.5] [--reps 2] [--rounds 3] [--quick]

The harness is the shared one (`../shared/peer/flower_sim_bench.py`, beside the project checkout; `--peer-dir`
names another). Flower 1.41.0 runs in its own virtual environment (`run_flower_bench.sh` creates it on first use,
under ~/.cache/flowerbench unless FLOWERBENCH_VENV says otherwise; never in Estuary's), then Estuary's `noop`
method runs through the harness's `--engine` with `run_estuary` below as the adapter: `load_config` +
`run_experiment`, pooled mode, `num_cpus` per worker actor, a round marked from the strategy's first hook to the
end of `RunContext.end_round` (the round's records and checkpoint inside the span). Every (N, CPUs per worker,
repetition) is a fresh process; memory is the peak RSS (and PSS) summed over that process and all it spawns.

Prints, per (N, CPUs per worker): the steady round time ratio Flower/Estuary (mean of rounds 2..R, medians over
repetitions), the peak memory ratio Estuary/Flower, the ratio of the times from the engine's entry (imports
included) to the end of round 1, and whether each goal of issue 31 is met: a round ≥ 10× faster at N = 500,
memory ≤ Flower's + 10 %, round 1 over no later than Flower's, and a per-client cost that stays flat as N grows
(ms per client-round at the largest N at most 1.2× that at the smallest; add 1000 to --clients for the issue's
full 50 → 1,000 range). Writes bench/results/peer_flower.json (`--quick`: peer_flower_quick.json, N = 20 and 50,
one repetition, 2 rounds: a check that everything runs, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROUND_SPEEDUP_GOAL = 10.0  # Estuary's steady round at N = 500 at least this many times faster than Flower's
MEMORY_GOAL = 1.10  # Estuary's peak process-tree memory at most Flower's + 10 %
FLAT_GOAL = 1.2  # ms per client-round at the largest N at most this times that at the smallest


def run_estuary(n_clients: int, rounds: int, num_cpus: float, rec: Any) -> dict[str, Any]:
    """The harness's engine signature (`fn(n_clients, rounds, num_cpus, rec) -> dict`): Estuary's `noop` method
    over `n_clients` clients, `num_cpus` per pooled worker. Runs in the harness's child process."""
    t0 = time.perf_counter()
    import ray

    from estuary.platform import run_context
    from estuary.platform.loading import load_config
    from estuary.platform.runner import run_experiment
    from estuary.strategies.noop import Noop

    import_s = time.perf_counter() - t0
    rec.mark(0, "call")  # as Flower's engine: just before the run call, after the imports (reported as import_s)

    orig_prepare = Noop.prepare_round
    orig_end = run_context.RunContext.end_round

    def prepare_round(self: Any, rnd: int, server: Any) -> dict[str, float]:
        rec.mark(rnd, "start")
        return orig_prepare(self, rnd, server)

    def end_round(self: Any, strategy: Any, rnd: int, metrics: Any, outcome: Any, *a: Any, **k: Any) -> None:
        rec.note(rnd, "replies", outcome.ok)
        rec.note(rnd, "errors", len(outcome.failures))
        orig_end(self, strategy, rnd, metrics, outcome, *a, **k)
        rec.mark(rnd, "end")

    Noop.prepare_round = prepare_round
    run_context.RunContext.end_round = end_round
    out_dir = tempfile.mkdtemp(prefix="estuary-peer-")
    job = {
        "name": f"peer{n_clients}", "method": "noop", "baselines": [], "rounds": rounds,
        "data": {"task": "sst2", "partition": "iid", "min_client_size": 2},
        "clients": {"count": n_clients, "resources": {"num_cpus": num_cpus}},
        "evaluation": {"server": False},
        "ray": {"dashboard": False},
        "output": {"dir": out_dir, "run_id": "peer", "plots": False, "keep_checkpoints": 1},
    }
    run_experiment(load_config(base=job), show_progress=False)
    if ray.is_initialized():
        ray.shutdown()
    from importlib.metadata import version

    return {"import_s": import_s, "versions": {"ray": version("ray"), "estuary": version("estuary")},
            "notes": "Estuary noop strategy, pooled mode; round span includes records + checkpoint"}


def peer_dir(given: str | None) -> Path:
    """The shared harness: --peer-dir, else ESTUARY_PEER_DIR, else shared/peer beside the checkout."""
    path = Path(given or os.environ.get("ESTUARY_PEER_DIR") or REPO.parent / "shared" / "peer").resolve()
    if not (path / "flower_sim_bench.py").is_file():
        raise SystemExit(f"no flower_sim_bench.py in {path}; give the shared harness folder with --peer-dir")
    return path


def harness_args(args: argparse.Namespace) -> list[str]:
    return ["--clients-list", args.clients, "--cpus-list", args.cpus, "--reps", str(args.reps),
            "--rounds", str(args.rounds), "--settle", str(args.settle)]


def run_flower(args: argparse.Namespace, peer: Path, work: Path) -> dict[str, Any]:
    out = work / "flower.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # Flower's env only
    env["FLOWERBENCH_VENV"] = os.environ.get("FLOWERBENCH_VENV") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowerbench" / "venv")
    env.update(FLOWERBENCH_OUT=str(out), FLOWERBENCH_LOGS=str(work / "flower-logs"))
    print(f"[peer_flower] Flower: venv {env['FLOWERBENCH_VENV']} (created on first use)", file=sys.stderr, flush=True)
    subprocess.run(["bash", str(peer / "run_flower_bench.sh"), *harness_args(args)], env=env, cwd=REPO,
                   stdout=sys.stderr, check=False)
    if not out.is_file():
        raise SystemExit(f"the Flower run wrote no results ({out}); its logs: {work / 'flower-logs'}")
    return json.loads(out.read_text())


def run_estuary_harness(args: argparse.Namespace, peer: Path, work: Path) -> dict[str, Any]:
    out = work / "estuary.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO), env.get("PYTHONPATH")) if p)
    print("[peer_flower] Estuary: noop through bench.peer_flower:run_estuary", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(peer / "flower_sim_bench.py"), "--engine", "bench.peer_flower:run_estuary",
                    *harness_args(args), "--out", str(out), "--log-dir", str(work / "estuary-logs")],
                   env=env, cwd=REPO, stdout=sys.stderr, check=False)  # from the checkout: ../shared/data is found
    if not out.is_file():
        raise SystemExit(f"the Estuary run wrote no results ({out}); its logs: {work / 'estuary-logs'}")
    return json.loads(out.read_text())


def to_round1_end(run: dict[str, Any]) -> float | None:
    """Engine entry to the end of round 1: the engine's imports, its start-up (Ray, data, pool) and round 1."""
    parts = [run.get("import_s"), run.get("time_to_round1_start_s"), run.get("first_round_s")]
    return sum(parts) if all(isinstance(p, (int, float)) for p in parts) else None  # type: ignore[arg-type]


def med(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(vals), 4) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def engine_rows(doc: dict[str, Any]) -> dict[tuple[int, float], dict[str, Any]]:
    """Per (N, CPUs per worker): the harness's medians, and the median time to the end of round 1."""
    rows = {}
    for row in doc["summary"]:
        key = (int(row["clients"]), float(row["num_cpus_per_client"]))
        runs = [r for r in doc.get("runs", []) if (int(r["clients"]), float(r["num_cpus_per_client"])) == key]
        rows[key] = {
            "all_ok": row["all_ok"],
            "later_round_s": row["later_round_s"],
            "ms_per_client_round": row["ms_per_client_round"],
            "first_round_s": row["first_round_s"],
            "import_s": row["import_s"],
            "to_round1_end_s": med([to_round1_end(r) for r in runs]),
            "total_wall_s": row["total_wall_s"],
            "peak_rss_tree_mib": row["peak_rss_tree_mib"],
            "peak_pss_tree_mib": row["peak_pss_tree_mib"],
            "peak_driver_rss_mib": row["peak_driver_rss_mib"],
            "later_round_s_per_rep": row.get("later_round_s_per_rep"),
        }
    return rows


def compare(flower: dict[str, Any], estuary: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    fl, es = engine_rows(flower), engine_rows(estuary)
    rows = []
    for key in sorted(set(fl) & set(es), key=lambda k: (-k[1], k[0])):
        f, e = fl[key], es[key]
        speedup = ratio(f["later_round_s"], e["later_round_s"])
        memory = ratio(e["peak_rss_tree_mib"], f["peak_rss_tree_mib"])
        first = ratio(f["to_round1_end_s"], e["to_round1_end_s"])
        rows.append({
            "clients": key[0], "cpus_per_worker": key[1], "ok": f["all_ok"] and e["all_ok"],
            "round_speedup_flower_over_estuary": speedup,
            "memory_ratio_estuary_over_flower": memory,
            "pss_ratio_estuary_over_flower": ratio(e["peak_pss_tree_mib"], f["peak_pss_tree_mib"]),
            "round1_end_ratio_flower_over_estuary": first,
            "goal_round_10x": None if key[0] != 500 or speedup is None else speedup >= ROUND_SPEEDUP_GOAL,
            "goal_memory": None if memory is None else memory <= MEMORY_GOAL,
            "goal_first_round": None if first is None else first >= 1.0,
            "flower": f, "estuary": e,
        })
    flat: dict[str, Any] = {}
    for cpus in sorted({k[1] for k in es}, reverse=True):
        pts = sorted((n, r["ms_per_client_round"]) for (n, c), r in es.items()
                     if c == cpus and r["ms_per_client_round"] is not None)
        if len(pts) >= 2:
            growth = max(ms for _, ms in pts[1:]) / pts[0][1] if pts[0][1] else None
            flat[str(cpus)] = {"ms_per_client_round": dict(pts), "max_over_smallest_n": round(growth, 3)
                               if growth is not None else None,
                               "flat": None if growth is None else growth <= FLAT_GOAL,
                               "range": f"{pts[0][0]}→{pts[-1][0]}"}
    return rows, flat


def _yes(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "NO")


def report(rows: list[dict[str, Any]], flat: dict[str, Any]) -> None:
    print(f"{'N':>5} {'cpus/w':>6} | {'round F/E':>9} {'mem E/F':>8} {'r1-end F/E':>10} | "
          f"{'round ≥10× @500':>15} {'mem ≤ F+10%':>11} {'r1 ≤ F':>6} | Flower / Estuary: round s, peak MiB, r1-end s")
    for r in rows:
        f, e = r["flower"], r["estuary"]
        print(f"{r['clients']:>5} {r['cpus_per_worker']:>6} | {r['round_speedup_flower_over_estuary']!s:>9} "
              f"{r['memory_ratio_estuary_over_flower']!s:>8} {r['round1_end_ratio_flower_over_estuary']!s:>10} | "
              f"{_yes(r['goal_round_10x']):>15} {_yes(r['goal_memory']):>11} {_yes(r['goal_first_round']):>6} | "
              f"{f['later_round_s']}/{e['later_round_s']}, {f['peak_rss_tree_mib']:.0f}/{e['peak_rss_tree_mib']:.0f}, "
              f"{f['to_round1_end_s']}/{e['to_round1_end_s']}" + ("" if r["ok"] else "  (a run FAILED)"))
    for cpus, f in flat.items():
        print(f"per-client cost, {cpus} CPUs per worker, N {f['range']}: ms/client-round {f['ms_per_client_round']} "
              f"(largest/smallest N {f['max_over_smallest_n']}) flat: {_yes(f['flat'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="50,200,500", help="client counts N, comma-separated")
    ap.add_argument("--cpus", default="1,0.5", help="CPUs per worker actor, comma-separated")
    ap.add_argument("--reps", type=int, default=2, help="fresh-process repetitions per (N, CPUs)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per run (round 1 is reported apart)")
    ap.add_argument("--settle", type=float, default=3.0, help="pause between runs, s")
    ap.add_argument("--quick", action="store_true", help="N 20,50, CPUs 1, 1 rep, 2 rounds: a check, not a result")
    ap.add_argument("--peer-dir", default=None, help="the shared harness folder (default ../shared/peer)")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.cpus, args.reps, args.rounds, args.settle = "20,50", "1", 1, 2, 1.0
    peer = peer_dir(args.peer_dir)
    work = Path(tempfile.mkdtemp(prefix="peer-flower-"))
    print(f"[peer_flower] harness {peer}, logs and raw results under {work}", file=sys.stderr, flush=True)
    flower = run_flower(args, peer, work)
    estuary = run_estuary_harness(args, peer, work)
    rows, flat = compare(flower, estuary)
    report(rows, flat)
    from bench.common import write_result

    write_result("peer_flower_quick" if args.quick else "peer_flower", {
        "params": {"clients": args.clients, "cpus_per_worker": args.cpus, "reps": args.reps, "rounds": args.rounds,
                   "quick": args.quick, "harness": str(peer)},
        "goals": {"round_speedup_at_500": ROUND_SPEEDUP_GOAL, "memory_ratio_max": MEMORY_GOAL,
                  "round1_end_ratio_min": 1.0, "per_client_growth_max": FLAT_GOAL},
        "definitions": {
            "round": "mean of rounds 2..R (median over repetitions); Flower: configure_train → aggregate_train, "
                     "Estuary: prepare_round → end of RunContext.end_round (records, checkpoint)",
            "memory": "peak over samples of RSS summed over the run's process tree (PSS beside it)",
            "to_round1_end_s": "engine entry → end of round 1: imports + start-up (Ray, data, pool) + round 1",
        },
        "versions": {"flower": flower.get("versions"), "estuary": estuary.get("versions")},
        "machine": flower.get("machine"),
        "rows": rows,
        "per_client_flat": flat,
        "fits": {"flower": flower.get("derived_linear_fit_later_round_s_vs_N"),
                 "estuary": estuary.get("derived_linear_fit_later_round_s_vs_N")},
        "raw": str(work),
    })


if __name__ == "__main__":
    main()
