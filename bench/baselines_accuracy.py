"""Zero-shot vs standalone vs centralized accuracy: tasks × client counts × seeds, through `estuary run`.

    python -m bench.baselines_accuracy [--tasks sst2 agnews] [--clients 4 16] [--seeds 0 1 2]
                                       [--set training.steps=10 ...]

Each cell is one real run of jobs/bench-baselines.yaml (the method `standalone` with the `zero_shot` and
`centralized` baselines, same seed and splits). Prints mean ± std over seeds of the clients' accuracy on the
global test split, the gain of standalone and centralized over zero-shot in the same runs, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import write_result
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment

JOB = Path(__file__).resolve().parents[1] / "jobs" / "bench-baselines.yaml"
KEY = "client/test/accuracy/mean"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["sst2", "agnews"])
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], help="extra job overrides")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    cells = []
    for task in args.tasks:
        for n in args.clients:
            per_seed = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                overrides = [f"data.task={task}", f"clients.count={n}", f"seed={seed}",
                             f"output.dir={out}", f"output.run_id={task}-{n}-s{seed}", *args.set]
                run_dir = run_experiment(load_config(JOB, overrides), show_progress=False)
                summary = json.loads((run_dir / "summary.json").read_text())
                acc = {name: s["metrics"].get(KEY) for name, s in summary["strategies"].items()}
                acc["server_zero_shot"] = summary["strategies"]["zero_shot"]["metrics"].get("server/test/accuracy")
                per_seed.append({"seed": seed, "accuracy": acc, "wall_s": round(time.perf_counter() - t0, 1)})
                print(json.dumps({"task": task, "clients": n, **per_seed[-1]}), flush=True)
            cell = {"task": task, "clients": n, "runs": per_seed}
            for name in ("zero_shot", "standalone", "centralized", "server_zero_shot"):
                vals = [r["accuracy"][name] for r in per_seed if r["accuracy"].get(name) is not None]
                if vals:
                    cell[name] = {"mean": round(statistics.fmean(vals), 4),
                                  "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}
            for name in ("standalone", "centralized"):
                gains = [r["accuracy"][name] - r["accuracy"]["zero_shot"] for r in per_seed]
                cell[f"{name}_minus_zero_shot"] = round(statistics.fmean(gains), 4)
            cells.append(cell)
    print(f"\n{'task':<8}{'clients':>8}  {'zero-shot':>17} {'standalone':>17} {'centralized':>17} {'LLM 0-shot':>17}")
    def cell_text(c: dict, k: str) -> str:
        return f"{c[k]['mean']:.3f} ± {c[k]['std']:.3f}" if k in c else "—"

    for c in cells:
        f = lambda k, c=c: cell_text(c, k)  # noqa: E731
        print(f"{c['task']:<8}{c['clients']:>8}  {f('zero_shot'):>17} {f('standalone'):>17} "
              f"{f('centralized'):>17} {f('server_zero_shot'):>17}")
    write_result("baselines_accuracy", {"job": str(JOB.name), "overrides": args.set, "cells": cells})


if __name__ == "__main__":
    main()
