"""docs/results.md from the grid and its run records: per method a table (mean ± std over seeds, n), each row's
command, the missing runs, and a few sentences generated from the numbers (bench/claims.py collects the runs)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.claims_diagnostics import diagnostics_lines, reading_lines
from estuary.platform.report import (
    CLASSIFICATION_COLUMNS,
    GENERATION_COLUMNS,
    epsilon_reached,
    metric_variants,
    pick_metric,
    variant_metrics,
)

if TYPE_CHECKING:
    from bench.claims import Cell, Grid, Method, Run

ACC_COLUMNS = [(t, k) for t, k in CLASSIFICATION_COLUMNS if t != "SLM own-eval acc"]
PPL_COLUMNS = [(t, k) for t, k in GENERATION_COLUMNS if t == "SLM test PPL"]
SLM_ACC, SLM_PPL = "client/test/accuracy/mean", "client/test/perplexity/mean"
LLM_ACC, LLM_START = "server/llm/test/accuracy|server/test/accuracy", "server/llm_start/test/accuracy"
RULE = ("A method and its baselines share each seed's splits and test sample, so they are compared seed by seed: "
        "a gain is the mean over the seeds both have of the per-seed difference, and it counts as outside the seed "
        "spread when its size exceeds the standard deviation of those differences (n ≥ 2); with one seed the "
        "spread is unknown.")
BASELINE_NAMES = {"standalone": "standalone", "fedavg": "`fedavg`", "zero_shot": "the zero-shot SLM",
                  "dp_standalone": "the DP-SGD student (`dp_standalone`)",
                  "distildp:hard_labels": "its hard-label-only twin"}


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    def text(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}" if self.n > 1 else f"{self.mean:.3f}"


def stat(values: Iterable[float]) -> Stat | None:
    """Mean ± sample std of the values (std 0 for one value); None for none."""
    vals = list(values)
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def per_seed(runs: dict[int, Run], strategy: str, spec: str) -> dict[int, float]:
    """seed → a strategy's final metric (`spec`: "a|b", the first key it has); "name:variant" reads an in-run
    twin's metrics (client/<variant>/...)."""
    name, _, variant = strategy.partition(":")
    out = {}
    for seed, run in runs.items():
        entry = run.summary.get("strategies", {}).get(name)
        if entry is None:
            continue
        metrics = entry.get("metrics", {})
        if variant:
            metrics = variant_metrics(metrics, variant)
        key = pick_metric(metrics, spec)
        if key is not None:
            out[seed] = float(metrics[key])
    return out


def is_generation(runs: Iterable[Run]) -> bool:
    return any(r.summary.get("task_kind") == "generation" for r in runs)


# ------------------------------------------------------------------------------------------------ the table
def row_strategies(cell: Cell, runs: dict[int, Run], columns: list[tuple[str, str]]) -> list[str]:
    """The method, its in-run variants ("distildp:hard_labels"), then the cell's baselines, as recorded."""
    entries = [r.summary.get("strategies", {}).get(cell.method, {}).get("metrics", {}) for r in runs.values()]
    variants = [f"{cell.method}:{v}" for v in metric_variants(entries, columns)]
    return [cell.method, *variants, *cell.baselines]


def strategy_wall_s(run: Run, name: str) -> float:
    """The strategy's wall time in a run: its summary's, but never less than its recorded rounds took (a run
    resumed after a crash by code before 2026-12-06 counted only what the resumed driver ran)."""
    rounds = sum(float(r.get("wall_s", 0.0)) for r in run.rounds if r.get("strategy") == name)
    return max(float(run.summary["strategies"][name].get("wall_s", 0.0)), rounds)


def table_row(cell: Cell, strategy: str, runs: dict[int, Run], columns: list[tuple[str, str]]) -> str | None:
    name, _, variant = strategy.partition(":")
    present = {s: r for s, r in runs.items() if name in r.summary.get("strategies", {})}
    if not present:
        return None
    cells = [(st.text() if (st := stat(per_seed(present, strategy, spec).values())) else "—") for _, spec in columns]
    eps = [e for r in present.values() if (e := epsilon_reached(r.summary, name)) is not None]
    eps_text = ("∞" if max(eps) == float("inf") else f"{max(eps):.2f}") if eps else "—"
    walls = [strategy_wall_s(r, name) for r in present.values()]
    incomplete = any(not r.summary["strategies"][name].get("complete", True) for r in present.values())
    label = f"{name}: {variant}" if variant else name
    label += " (incomplete)" if incomplete else ""
    wall = "" if variant else f"{statistics.fmean(walls):.0f}"
    return "| " + " | ".join([f"`{cell.name}`", label, str(len(present)), *cells, eps_text, wall]) + " |"


def method_table(cells: list[Cell], runs: dict[str, dict[int, Run]], columns: list[tuple[str, str]]) -> list[str]:
    head = ["cell", "strategy", "n", *(t for t, _ in columns), "ε reached", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        for strategy in row_strategies(cell, runs[cell.name], columns):
            row = table_row(cell, strategy, runs[cell.name], columns)
            if row is not None:
                lines.append(row)
    return lines


# ------------------------------------------------------------------------------------------------ the text
@dataclass(frozen=True)
class Gain:
    cell: str
    delta: float  # method − baseline in points (accuracy) or baseline − method in PPL: positive is better
    spread: float  # std over the seeds of the per-seed difference
    n: int
    outside: bool | None  # None: fewer than two seeds


def gain(cell: Cell, baseline: str, runs: dict[str, dict[int, Run]], generation: bool) -> Gain | None:
    """The method's gain over `baseline` on the seeds both have (the baseline from the cell's own run, or from
    `baselines_from`'s run of the same seed)."""
    own = baseline.partition(":")[0] == cell.method
    source = cell.name if own or cell.baselines_from is None else cell.baselines_from
    spec = SLM_PPL if generation else SLM_ACC
    mine, theirs = per_seed(runs.get(cell.name, {}), cell.method, spec), per_seed(runs.get(source, {}), baseline, spec)
    sign, scale = (-1.0, 1.0) if generation else (1.0, 100.0)  # positive is better: PPL lower, accuracy higher
    diff = stat(sign * scale * (mine[s] - theirs[s]) for s in sorted(mine.keys() & theirs.keys()))
    if diff is None:
        return None
    return Gain(cell.name, diff.mean, diff.std, diff.n, abs(diff.mean) > diff.std if diff.n > 1 else None)


def gain_text(g: Gain, generation: bool) -> str:
    shown = round(g.delta, 2 if generation else 1) + 0.0  # + 0.0: a float-noise -0.0 shows as +0.0
    size = (f"{abs(shown):.2f} PPL {'lower' if shown >= 0 else 'higher'}" if generation
            else f"{shown:+.1f} points")
    unit = " PPL" if generation else " points"
    if g.outside is None:
        noise = "one seed, spread unknown"
    else:
        noise = f"{'outside' if g.outside else 'within'} the seed spread of {g.spread:.{2 if generation else 1}f}{unit}"
    return f"{size} on `{g.cell}` (n = {g.n}; {noise})"


def compare_sentence(method: Method, baseline: str, cells: list[Cell], runs: dict[str, dict[int, Run]],
                     generation: bool) -> str:
    gains = [g for c in cells if (g := gain(c, baseline, runs, generation)) is not None]
    without = [f"`{c.name}`" for c in cells if gain(c, baseline, runs, generation) is None]
    what = "SLM test perplexity is" if generation else "SLM test accuracy is"
    who = BASELINE_NAMES.get(baseline, f"`{baseline}`")
    if not gains:
        return f"No recorded cell of {method.title.split(' (')[0]} has {who} to compare with."
    text = f"Against {who}, the {what} " + "; ".join(gain_text(g, generation) for g in gains)
    return text + (f" ({who} not recorded in {', '.join(without)})." if without else ".")


def mean_text(values: dict[int, float]) -> str:
    st = stat(values.values())
    return st.text() if st else "—"


def llm_sentence(cells: list[Cell], runs: dict[str, dict[int, Run]]) -> str:
    """The served LLM's own accuracy, round 0 (from rounds.jsonl) → after the method, beside its bounds."""
    parts = []
    for cell in cells:
        own = runs[cell.name]
        after = per_seed(own, cell.method, LLM_ACC)
        if not after:
            continue
        start = {s: float(r["metrics"][LLM_START]) for s, run in own.items() for r in run.rounds
                 if r.get("strategy") == cell.method and LLM_START in r.get("metrics", {})}
        base = {s: r for s, r in runs.get(cell.baselines_from or cell.name, {}).items() if s in own}  # same seeds
        parts.append(f"{mean_text(start)} → {mean_text(after)} on `{cell.name}` (zero-shot LLM "
                     f"{mean_text(per_seed(base, 'zero_shot', LLM_ACC))}, `llm_centralized` "
                     f"{mean_text(per_seed(base, 'llm_centralized', LLM_ACC))})")
    if not parts:
        return "No recorded run has the LLM's test accuracy."
    return "The server LLM's test accuracy, before the first round → after the last: " + "; ".join(parts) + "."


def claim_sentence(method: Method, cells: list[Cell], runs: dict[str, dict[int, Run]], generation: bool) -> str:
    claim = method.claim
    eligible = [c for c in cells if claim.get("epsilon") is None or c.epsilon == claim["epsilon"]]
    gains = [g for c in eligible if (g := gain(c, claim["baseline"], runs, generation)) is not None]
    quoted = f"The paper claims “{claim['text']}”"
    if not gains:
        return f"{quoted}; not measured here yet."
    best = max(gains, key=lambda g: g.delta)
    unit = "PPL" if generation else "points"
    who = BASELINE_NAMES.get(claim["baseline"], claim["baseline"])
    measured = f"{quoted}; the largest gain measured here over {who} is {gain_text(best, generation)}"
    if float(claim["gain"]) == 0.0:  # a claim of direction only ("SLMs up"): no size to compare against
        return f"{measured}, {'a gain, as claimed' if best.delta > 0 else 'no gain, unlike the claim'}."
    verdict = "at or above" if best.delta >= float(claim["gain"]) else "below"
    return f"{measured}, {verdict} the claimed {float(claim['gain']):g} {unit}."


def comparison_text(method: Method, cells: list[Cell], runs: dict[str, dict[int, Run]]) -> str:
    recorded = [c for c in cells if runs.get(c.name)]
    generation = is_generation(r for c in recorded for r in runs[c.name].values())
    if not recorded:
        names = [BASELINE_NAMES.get(b, b) for b in method.compare]
        who = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
        return (f"No run of {method.title.split(' (')[0]} is recorded yet, so there is no measured gain over {who}. "
                f"{claim_sentence(method, cells, runs, generation)}")
    sentences = [compare_sentence(method, b, recorded, runs, generation) for b in method.compare]
    if method.trains_llm:
        sentences.append(llm_sentence(recorded, runs))
    sentences.append(claim_sentence(method, recorded, runs, generation))
    return " ".join(sentences)


# ------------------------------------------------------------------------------------------------ the page
def header(grid: Grid, runs: dict[str, dict[int, Run]]) -> list[str]:
    planned = sum(len(c.seeds) for c in grid.cells.values())
    have = sum(1 for c in grid.cells.values() for s in c.seeds if s in runs.get(c.name, {}))
    lines = [
        "# Results: FDKT, CrossLM, FedMKT and DistilDP against their baselines", "",
        "Generated by `python -m bench.claims write` from the run records committed under `results/<cell>/<run id>/`"
        " (each run's config.yaml, summary.json, rounds.jsonl, clients.jsonl and privacy.jsonl); the cells are in"
        " `results/grid.yaml`. Do not edit by hand: `python -m bench.claims check` fails when this page differs"
        " from the records. Earlier runs (a Qwen2.5-0.5B server) are in"
        " [results-log-2026-11.md](results-log-2026-11.md).", "",
        f"Recorded: {have} of {planned} runs. Every cell runs with its baselines in the same run (or, with"
        " `baselines_from`, beside another cell's run of the same seed and splits). Numbers are mean ± std over"
        " seeds; n is the number of seeds. SLM columns are the mean over the clients of the global test split;"
        " the LLM column is the served LLM's test accuracy (the zero-shot row: before any training). ε reached is"
        " the largest ε any client's ledger reached; wall s is the strategy's wall time (mean over seeds; a"
        " resumed run's counts its rounds before the crash). " + RULE, "",
        "Hosts are each run's driver machine as its summary.json records it (runs recorded before records"
        " carried it: not recorded). On a host without native bfloat16, `server.dtype: auto` serves in float32"
        " and the clients' bfloat16 Linear layers run as float32 GEMMs with bfloat16 rounding (README,"
        " Precision); wall times differ between hosts.",
        "", "| cell | method | setting | seeds recorded | hosts (seeds: host) | job |", "|---|---|---|---|---|---|",
    ]
    for c in grid.cells.values():
        got = sorted(s for s in c.seeds if s in runs.get(c.name, {}))
        seeds = f"{', '.join(map(str, got)) or 'none'} of {', '.join(map(str, c.seeds))}"
        hosts = host_text({s: runs[c.name][s] for s in got})
        lines.append(f"| `{c.name}` | {c.method} | {c.label()} | {seeds} | {hosts} | `{c.job}` |")
    return lines


def host_label(run: Run) -> str:
    """A run's driver host from its summary: CPUs, torch's CPU capability, and whether bfloat16 is native."""
    host = run.summary.get("host")
    if not isinstance(host, dict):
        return "not recorded"
    native = "" if host.get("native_bf16") else ", no native bfloat16"
    return f"{host.get('cpus')} CPUs, {host.get('cpu_capability')}{native}"


def host_text(runs: dict[int, Run]) -> str:
    """The recorded seeds grouped by host, e.g. `0, 1: not recorded; 2: 2 CPUs, AVX2, no native bfloat16`."""
    groups: dict[str, list[int]] = {}
    for seed, run in sorted(runs.items()):
        groups.setdefault(host_label(run), []).append(seed)
    return "; ".join(f"{', '.join(map(str, seeds))}: {label}" for label, seeds in groups.items()) or "none"


def method_section(method: Method, grid: Grid, runs: dict[str, dict[int, Run]],
                   missing: list[tuple[Cell, list[int]]]) -> list[str]:
    cells = [c for c in grid.cells.values() if c.method == method.name]
    recorded = [c for c in cells if runs.get(c.name)]
    lines = ["", f"## {method.title}", ""]
    if recorded:
        generation = is_generation(r for c in recorded for r in runs[c.name].values())
        lines += method_table(recorded, runs, PPL_COLUMNS if generation else ACC_COLUMNS)
    else:
        lines.append("No records yet.")
    lines += diagnostics_lines(method.diagnostics, recorded, runs)
    lines += ["", comparison_text(method, cells, runs)]
    lines += reading_lines(method.reading, sum(len(runs[c.name]) for c in recorded))
    lines += ["", "Commands (S: the seed):", ""]
    for c in cells:
        note = f"; {c.note}" if c.note else ""
        source = f"; baselines from `{c.baselines_from}`" if c.baselines_from else ""
        lines.append(f"- `{c.name}` ({c.label()}{note}{source}): `{c.command()}`, S in "
                     f"{', '.join(map(str, c.seeds))}; or `python -m bench.claims run {c.name} --seed S`")
    gaps = [(c, seeds) for c, seeds in missing if c.method == method.name]
    if gaps:
        lines += ["", "Missing:", ""]
        for c, seeds in gaps:
            lines.append(f"- `{c.name}`, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: "
                         f"`python -m bench.claims run {c.name}` (its missing seeds in turn)")
    return lines


def render_page(grid: Grid, runs: dict[str, dict[int, Run]], missing: list[tuple[Cell, list[int]]]) -> str:
    lines = header(grid, runs)
    for method in grid.methods.values():
        lines += method_section(method, grid, runs, missing)
    return "\n".join(lines) + "\n"
