"""DistilDP's claim: student perplexity on real held-out text, DistilDP vs the DP-SGD student vs hard-label-only
distillation vs a non-private teacher, at several ε, through `estuary run`.

    python -m bench.distildp_ppl [--jobs distildp-yelp distildp-e2e] [--epsilons 2 4 8 inf] [--seeds 0]
                                 [--set training.steps=32 ...]

Each cell is one real run of jobs/<job>.yaml with privacy.target_epsilon set (inf: a non-private teacher and
a non-private standalone student). In one run: zero-shot, the DP-SGD student (dp_standalone, same ε), the
DistilDP student and its hard-label-only twin (same teacher, same synthetic text, same start). Prints the mean
test perplexity of the clients and each one's difference from the DP-SGD student of the same run (negative:
better than it), and writes bench/results/distildp_ppl.json: each cell with the overrides it ran with; cells
recorded before are kept unless this run measures the same job, ε and overrides again.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write_result
from estuary.errors import EstuaryError
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment

JOBS = Path(__file__).resolve().parents[1] / "jobs"
KEY = "client/test/perplexity/mean"
ROWS = ("zero_shot", "dp_standalone", "hard_labels", "distildp")


def perplexities(summary: dict[str, Any]) -> dict[str, float | None]:
    s = summary["strategies"]
    return {"zero_shot": s.get("zero_shot", {}).get("metrics", {}).get(KEY),
            "dp_standalone": s.get("dp_standalone", {}).get("metrics", {}).get(KEY),
            "hard_labels": s["distildp"]["metrics"].get("client/hard_labels/test/perplexity/mean"),
            "distildp": s["distildp"]["metrics"].get(KEY)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", nargs="+", default=["distildp-yelp", "distildp-e2e"])
    ap.add_argument("--epsilons", nargs="+", default=["2", "4", "8", "inf"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], help="extra job overrides")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-distildp-"))
    cells = []
    for job in args.jobs:
        for eps in args.epsilons:
            runs = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                target = "null" if math.isinf(float(eps)) else eps
                overrides = [f"privacy.target_epsilon={target}", f"seed={seed}", f"output.dir={out}",
                             f"output.run_id={job}-eps{eps}-s{seed}", *args.set]
                try:
                    run_dir = run_experiment(load_config(JOBS / f"{job}.yaml", overrides), show_progress=False)
                except EstuaryError as exc:  # e.g. no DP teacher sample parsed: the cell says so, no figures
                    runs.append({"seed": seed, "failed": str(exc), "wall_s": round(time.perf_counter() - t0, 1)})
                    print(json.dumps({**runs[-1], "job": job, "target_epsilon": eps}), flush=True)
                    continue
                summary = json.loads((run_dir / "summary.json").read_text())
                eps_got = [v.get("epsilon") for v in summary.get("privacy", {}).get("distildp", {}).values()]
                runs.append({"seed": seed, "perplexity": perplexities(summary), "epsilon": eps_got,
                             "wall_s": round(time.perf_counter() - t0, 1), "run_dir": str(run_dir)})
                print(json.dumps({**runs[-1], "job": job, "target_epsilon": eps}), flush=True)
            cells.append(summarised(job, eps, runs))
    every = merged(cells, args.set)
    write_result("distildp_ppl", {"cells": every})
    # the cells as written: with the recorded seeds of the same job, ε and overrides that this run did not repeat
    print(f"\n{'job':<16}{'ε':>5}{'seeds':>7}  {'zero-shot':>10} {'DP-SGD':>10} {'hard-only':>10} {'DistilDP':>10} "
          f"{'Δ vs DP-SGD':>12}")
    for c in every[len(every) - len(cells):]:
        f = lambda k, c=c: f"{c[k]:.2f}" if k in c else "—"  # noqa: E731
        seeds = ",".join(str(r["seed"]) for r in c["runs"])
        print(f"{c['job']:<16}{c['epsilon']:>5}{seeds:>7}  {f('zero_shot'):>10} {f('dp_standalone'):>10} "
              f"{f('hard_labels'):>10} {f('distildp'):>10} {f('distildp_minus_dp_standalone'):>12}")


def summarised(job: str, eps: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell: its runs (one per seed) and, per row, the mean perplexity and mean difference from DP-SGD."""
    cell: dict[str, Any] = {"job": job, "epsilon": eps, "runs": runs}
    for name in ROWS:
        vals = [r["perplexity"][name] for r in runs if r.get("perplexity", {}).get(name) is not None]
        if vals:
            cell[name] = round(statistics.fmean(vals), 3)
    for name in ("hard_labels", "distildp"):
        ok = [r["perplexity"] for r in runs if "perplexity" in r]
        diffs = [q[name] - q["dp_standalone"] for q in ok
                 if q.get(name) is not None and q.get("dp_standalone") is not None]
        if diffs:
            cell[f"{name}_minus_dp_standalone"] = round(statistics.fmean(diffs), 3)
    return cell


def merged(cells: list[dict[str, Any]], overrides: list[str]) -> list[dict[str, Any]]:
    """This run's cells plus every recorded one it did not measure again, so cells measured in separate
    invocations end up in one file. A cell carries the overrides it ran with; a recorded cell of the same job,
    ε and overrides (files written before cells carried them: the file's overrides) gives way to this run's,
    which keeps the recorded runs of seeds it did not run again: seeds run one invocation at a time add up."""
    from bench.common import RESULTS

    path = RESULTS / "distildp_ppl.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    key = lambda c: (c["job"], c["epsilon"], tuple(c["overrides"]))  # noqa: E731
    new = [{**c, "overrides": overrides, "when": time.strftime("%Y-%m-%d %H:%M")} for c in cells]
    recorded = [{**c, "overrides": c.get("overrides", old.get("overrides", []))} for c in old.get("cells", [])]
    done = {key(c) for c in new}
    for i, c in enumerate(new):
        seeds = {r["seed"] for r in c.get("runs", [])}
        kept = [r for old_c in recorded if key(old_c) == key(c)
                for r in old_c.get("runs", []) if r["seed"] not in seeds]
        if kept:
            runs = sorted([*kept, *c["runs"]], key=lambda r: r["seed"])
            new[i] = {**summarised(c["job"], c["epsilon"], runs), "overrides": c["overrides"], "when": c["when"]}
    return [c for c in recorded if key(c) not in done] + new


if __name__ == "__main__":
    main()
