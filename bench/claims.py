"""Issue 28's transfer-quality page: the grid in results/grid.yaml, its committed run records, docs/results.md.

    python -m bench.claims run CELL [--seed S] [--dry-run]   # run a cell (all its missing seeds without --seed)
    python -m bench.claims run all [--dry-run]               # every run of the grid not recorded yet
    python -m bench.claims write                             # docs/results.md from results/*/*/
    python -m bench.claims check                             # exit 1 when docs/results.md differs from `write`

`run` calls `estuary run <job> --set ... --set seed=S` with the run folder under runs/claims/ (ignored by git),
then copies the run's config.yaml, summary.json, rounds.jsonl, clients.jsonl (each client's metrics per round)
and privacy.jsonl (never checkpoints) to results/<cell>/<run id>/, to be committed as each run finishes. A
cell's seed counts once: its latest complete run (run ids end in a UTC timestamp, so the latest sorts last).
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.claims_diagnostics import Reading, check_diagnostic, check_reading
from estuary.platform.records import read_jsonl, read_summary

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "results" / "grid.yaml"
RESULTS = ROOT / "results"
PAGE = ROOT / "docs" / "results.md"
RECORD_FILES = ("config.yaml", "summary.json", "rounds.jsonl", "clients.jsonl", "privacy.jsonl")


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    compare: list[str]  # baselines the text compares with ("strategy:variant" for an in-run twin)
    trains_llm: bool
    claim: dict[str, Any]  # text (quoted from the issue), baseline, gain (points or PPL)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # bench/claims_diagnostics.py
    reading: Reading | None = None  # what the diagnostics say about the gains, without numbers


@dataclass(frozen=True)
class Cell:
    name: str
    method: str
    task: str
    scenario: str
    partition: str
    job: str
    sets: list[str]
    baselines: list[str]
    seeds: list[int]
    epsilon: float | None = None
    baselines_from: str | None = None
    note: str | None = None

    def estuary_args(self, seed: int | str) -> list[str]:
        """The `estuary run` arguments of this cell at `seed` (without where the run folder goes)."""
        args = [self.job]
        for s in [*self.sets, f"baselines=[{','.join(self.baselines)}]", f"seed={seed}"]:
            args += ["--set", s]
        return args

    def command(self, seed: int | str = "S") -> str:
        return shlex.join(["estuary", "run", *self.estuary_args(seed)])

    def label(self) -> str:
        eps = f", ε = {self.epsilon:g}" if self.epsilon is not None else ""
        part = "Dirichlet(0.5)" if self.partition == "dirichlet" else self.partition.upper()
        return f"{self.task}, {self.scenario}, {part}{eps}"


@dataclass(frozen=True)
class Grid:
    methods: dict[str, Method]
    cells: dict[str, Cell]


@dataclass
class Run:
    cell: str
    run_id: str
    seed: int
    summary: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)


def load_grid(path: Path = GRID) -> Grid:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    methods = {name: Method(name=name, title=m["title"], compare=list(m["compare"]),
                            trains_llm=bool(m.get("trains_llm")), claim=dict(m["claim"]),
                            diagnostics=[check_diagnostic(f"{path}: {name}", dict(d))
                                         for d in m.get("diagnostics", [])],
                            reading=check_reading(f"{path}: {name}", m.get("reading")))
               for name, m in raw["methods"].items()}
    cells = {}
    for name, c in raw["cells"].items():
        cells[name] = Cell(name=name, method=c["method"], task=c["task"], scenario=c["scenario"],
                           partition=c["partition"], job=c["job"], sets=[str(s) for s in c.get("set", [])],
                           baselines=list(c.get("baselines", [])), seeds=[int(s) for s in c["seeds"]],
                           epsilon=c.get("epsilon"), baselines_from=c.get("baselines_from"), note=c.get("note"))
    for cell in cells.values():
        if cell.method not in methods:
            raise ValueError(f"{path}: cell {cell.name} names method {cell.method!r}, not in methods:")
        if cell.baselines_from is not None and cell.baselines_from not in cells:
            raise ValueError(f"{path}: cell {cell.name} takes baselines from unknown cell {cell.baselines_from!r}")
    return Grid(methods=methods, cells=cells)


def collect(results: Path, grid: Grid) -> dict[str, dict[int, Run]]:
    """cell → seed → its latest complete run under results/<cell>/<run id>/ (folders without a complete
    summary.json are skipped: a run still going, or one that failed)."""
    found: dict[str, dict[int, Run]] = {}
    for cell in grid.cells:
        for run_dir in sorted((results / cell).glob("*/")):
            summary = read_summary(run_dir)
            if summary.get("status") != "complete" or "seed" not in summary:
                continue
            rounds = list(read_jsonl(run_dir / "rounds.jsonl"))
            seed = int(summary["seed"])
            found.setdefault(cell, {})[seed] = Run(cell, run_dir.name, seed, summary, rounds)
    return found


def missing(grid: Grid, runs: dict[str, dict[int, Run]]) -> list[tuple[Cell, list[int]]]:
    """(cell, its seeds without a complete run), in grid order; cells with every seed recorded left out."""
    out = []
    for cell in grid.cells.values():
        seeds = [s for s in cell.seeds if s not in runs.get(cell.name, {})]
        if seeds:
            out.append((cell, seeds))
    return out


def copy_records(run_dir: Path, dest: Path) -> list[Path]:
    """The record files of a finished run (those it has) copied to dest; nothing else."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
            copied.append(dest / name)
    return copied


def run_cell(cell: Cell, seed: int, results: Path, out_dir: Path, dry_run: bool = False) -> int:
    """One seed of a cell through `estuary run`; its records land in results/<cell>/<run id>/ when it completes."""
    run_id = f"{cell.name}-s{seed}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    argv = [sys.executable, "-m", "estuary", "run", *cell.estuary_args(seed), "--set", f"output.dir={out_dir}",
            "--set", f"output.run_id={run_id}", "--no-progress"]
    print(f"[{cell.name} seed {seed}] {cell.command(seed)}", flush=True)
    if dry_run:
        return 0
    rc = subprocess.run(argv, cwd=ROOT, check=False).returncode
    summary = read_summary(out_dir / run_id)
    if rc != 0 or summary.get("status") != "complete":
        print(f"[{cell.name} seed {seed}] not complete (exit {rc}); nothing copied to results/", file=sys.stderr)
        return rc or 1
    for path in copy_records(out_dir / run_id, results / cell.name / run_id):
        print(f"  recorded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    runs = collect(args.results, grid)
    if args.cell == "all":
        todo = [(cell, s) for cell, seeds in missing(grid, runs) for s in seeds]
    elif args.cell not in grid.cells:
        close = difflib.get_close_matches(args.cell, grid.cells, n=1)
        print(f"unknown cell {args.cell!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
        return 2
    elif args.seed is not None:
        todo = [(grid.cells[args.cell], args.seed)]
    else:
        todo = [(grid.cells[args.cell], s) for s in grid.cells[args.cell].seeds
                if s not in runs.get(args.cell, {})]
    if not todo:
        print("nothing to run: every seed of that has a complete run under results/")
    for cell, seed in todo:
        rc = run_cell(cell, seed, args.results, args.out, dry_run=args.dry_run)
        if rc:
            return rc
    return 0


def render(grid_path: Path, results: Path) -> str:
    from bench.claims_page import render_page

    grid = load_grid(grid_path)
    runs = collect(results, grid)
    return render_page(grid, runs, missing(grid, runs))


def cmd_write(args: argparse.Namespace) -> int:
    text = render(args.grid, args.results)
    args.page.parent.mkdir(parents=True, exist_ok=True)
    args.page.write_text(text, encoding="utf-8")
    print(f"written: {args.page}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    want = render(args.grid, args.results)
    have = args.page.read_text(encoding="utf-8") if args.page.exists() else ""
    if have == want:
        print(f"{args.page}: matches the records under {args.results}")
        return 0
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), str(args.page), "bench.claims write",
                                lineterm="", n=0)
    print("\n".join(list(diff)[:40]))
    print(f"{args.page} differs from the records under {args.results}: run `python -m bench.claims write`",
          file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__.split("\n")[0])
    p.add_argument("--grid", type=Path, default=GRID)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--page", type=Path, default=PAGE)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a cell of the grid and record it")
    run.add_argument("cell", help="a cell of results/grid.yaml, or all (every missing run)")
    run.add_argument("--seed", type=int, help="one seed (default: the cell's seeds not recorded yet)")
    run.add_argument("--out", type=Path, default=ROOT / "runs" / "claims", help="where run folders go")
    run.add_argument("--dry-run", action="store_true", help="print the commands only")
    sub.add_parser("write", help="write docs/results.md from the records")
    sub.add_parser("check", help="exit 1 when docs/results.md differs from what write would produce")
    args = p.parse_args(argv)
    try:
        return {"run": cmd_run, "write": cmd_write, "check": cmd_check}[args.command](args)
    except (ValueError, KeyError, yaml.YAMLError) as exc:  # a malformed grid: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
