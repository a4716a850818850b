"""`estuary report`: the results table (one run, or mean ± std over several runs/seeds) and plots."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.table import Table

from estuary.platform.records import Recorder

# (column title, metric key in a strategy's final metrics; "a|b": the first key a strategy has)
CLASSIFICATION_COLUMNS = [
    ("SLM own-eval acc", "client/eval/accuracy/mean"),
    ("SLM test acc", "client/test/accuracy/mean"),
    ("SLM test F1", "client/test/macro_f1/mean"),
    ("LLM test acc", "server/llm/test/accuracy|server/test/accuracy"),
]
LLM_SERIES = ["server/llm/test/accuracy", "server/llm/test/channel_accuracy", "server/llm/test/perplexity",
              "server/llm/general/perplexity"]
GENERATION_COLUMNS = [
    ("SLM own-eval PPL", "client/eval/perplexity/mean"),
    ("SLM test PPL", "client/test/perplexity/mean"),
    ("LLM test PPL", "server/llm/test/perplexity|server/test/perplexity"),
]


def pick_metric(metrics: dict[str, Any], key: str) -> str | None:
    """The first key of `key` ("a|b": a, else b) that `metrics` has; None if none."""
    return next((k for k in key.split("|") if k in metrics), None)


def epsilon_reached(summary: dict[str, Any], name: str) -> float | None:
    """The largest ε any client of `name` reached (None: no DP in that strategy; inf: privacy disabled)."""
    per_client = summary.get("privacy", {}).get(name) or {}
    eps = [float(c["epsilon"]) for c in per_client.values() if c.get("epsilon") is not None]
    return max(eps) if eps else None


def _columns(kind: str) -> list[tuple[str, str]]:
    return GENERATION_COLUMNS if kind == "generation" else CLASSIFICATION_COLUMNS


def _fmt(values: list[float], spread: list[float] | None = None) -> str:
    """Several runs: mean ± std across runs. One run: mean ± std across its clients (if several)."""
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) > 1:
        return f"{mean:.3f} ± {statistics.stdev(values):.3f}"
    if spread and spread[0] > 0:
        return f"{mean:.3f} ± {spread[0]:.3f}"
    return f"{mean:.3f}"


def _target(summary: dict[str, Any]) -> str:
    """The privacy setting a run asked for: "ε=3", "σ=1.1" (a fixed noise multiplier) or "ε=∞" (disabled)."""
    cfg = summary.get("privacy_config") or {}
    if not cfg.get("enabled", True):
        return "ε=∞"
    if cfg.get("target_epsilon") is not None:
        return f"ε={float(cfg['target_epsilon']):g}"
    return f"σ={cfg['noise_multiplier']:g}" if cfg.get("noise_multiplier") is not None else "ε=?"


def _groups(summaries: tuple[dict[str, Any], ...]) -> dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """Row label → (strategy name, summary, strategy entry) per run. A DP strategy run at several privacy
    targets gets one row per target (`fdkt @ ε=3`); a strategy repeated for the same seed (a baseline
    recomputed beside each ε) is counted once, so ± is over seeds."""
    several = _several_targets(summaries)
    groups: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
    seen: set[tuple[str, Any]] = set()
    for i, s in enumerate(summaries):
        for name, entry in s.get("strategies", {}).items():
            label = _label(s, name, several)
            seed = (label, s.get("seed", f"run{i}"))
            if seed in seen:
                continue
            seen.add(seed)
            groups.setdefault(label, []).append((name, s, entry))
    return groups


def _several_targets(summaries: Iterable[dict[str, Any]]) -> bool:
    """Whether the runs asked for different privacy settings (then each DP strategy gets a row per target)."""
    return len({_target(s) for s in summaries}) > 1


def _label(summary: dict[str, Any], name: str, several_targets: bool) -> str:
    return f"{name} @ {_target(summary)}" if several_targets and name in summary.get("privacy", {}) else name


def phases_table(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Table | None:
    """Wall seconds per round phase (prepare, clients, server, followup, evaluate), summed over a run's rounds,
    mean over runs; from each round record's `phases_s`."""
    several = _several_targets(s for s, _ in runs)
    per_label: dict[str, list[dict[str, float]]] = {}
    for summary, rounds in runs:
        totals: dict[str, dict[str, float]] = {}
        for r in rounds:
            for phase, sec in (r.get("phases_s") or {}).items():
                row = totals.setdefault(_label(summary, r["strategy"], several), {})
                row[phase] = row.get(phase, 0.0) + sec
        for label, row in totals.items():
            per_label.setdefault(label, []).append(row)
    phases = [p for p in ("prepare", "clients", "server", "followup", "evaluate")
              if any(p in row for rows in per_label.values() for row in rows)]
    if not phases:
        return None
    table = Table(title="wall s per phase (sum over rounds; mean over runs)")
    table.add_column("strategy")
    for p in phases:
        table.add_column(p, justify="right")
    for label, rows in per_label.items():
        table.add_row(label, *(f"{statistics.fmean(r.get(p, 0.0) for r in rows):.1f}" for p in phases))
    return table


def llm_rounds_table(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Table | None:
    """The server LLM's own series per round (round 0: before any transfer), mean ± std over runs: task
    accuracy (or perplexity) and general-text perplexity, for the strategies that train the LLM."""
    several = _several_targets(s for s, _ in runs)
    series: dict[tuple[str, str], dict[int, list[float]]] = {}
    for summary, rounds in runs:
        for r in rounds:
            for key in LLM_SERIES:
                start = key.replace("server/llm/", "server/llm_start/")
                row_key = (_label(summary, r["strategy"], several), key.removeprefix("server/llm/"))
                for rnd, k in ((0, start), (r["round"], key)):
                    if k in r.get("metrics", {}):
                        series.setdefault(row_key, {}).setdefault(rnd, []).append(float(r["metrics"][k]))
    if not series:
        return None
    rounds_seen = sorted({rnd for per in series.values() for rnd in per})
    table = Table(title="server LLM per round (0: before transfer; mean ± std over runs)")
    table.add_column("strategy")
    table.add_column("metric")
    for rnd in rounds_seen:
        table.add_column(f"r{rnd}", justify="right")
    for (label, metric), per in series.items():
        table.add_row(label, metric, *(_fmt(per[rnd]) if rnd in per else "—" for rnd in rounds_seen))
    return table


COUNT_PREFIXES = ("server/filter/", "server/augment/", "server/generate/", "server/select/", "server/transfer/")


def counts_table(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Table | None:
    """Samples at each server stage (FDKT's filters and augmentation, CrossLM's generation and selection),
    summed over a run's rounds, mean over runs; rows are the stages, columns the strategies."""
    several = _several_targets(s for s, _ in runs)
    per: dict[str, dict[str, list[float]]] = {}  # label → stage → one sum per run
    for summary, rounds in runs:
        sums: dict[str, dict[str, float]] = {}
        for r in rounds:
            for key, value in r.get("metrics", {}).items():
                if key.startswith(COUNT_PREFIXES) and "adapter_version" not in key and not key.endswith("_share"):
                    row = sums.setdefault(_label(summary, r["strategy"], several), {})
                    row[key.removeprefix("server/")] = row.get(key.removeprefix("server/"), 0.0) + value
        for label, row in sums.items():
            for stage, total in row.items():
                per.setdefault(label, {}).setdefault(stage, []).append(total)
    if not per:
        return None
    stages = list(dict.fromkeys(stage for rows in per.values() for stage in rows))
    table = Table(title="samples per server stage (sum over rounds; mean over runs)")
    table.add_column("stage")
    for label in per:
        table.add_column(label, justify="right")
    for stage in stages:
        table.add_row(stage, *(f"{statistics.fmean(per[label][stage]):.1f}" if stage in per[label] else "—"
                               for label in per))
    return table


ALIGN_COLUMNS = [("vocab exact →LLM", "vocab_exact"), ("vocab exact ←LLM", "vocab_exact_from_llm"),
                 ("seq coverage →LLM", "seq_coverage"), ("seq coverage ←LLM", "seq_coverage_from_llm")]


def alignment_table(runs: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Table | None:
    """FedMKT's token alignment per client model ↔ LLM pair: the share of vocabulary mapped exactly and of
    sequence positions aligned one-to-one to an equal text, both ways; mean over rounds, ± std over runs."""
    per: dict[tuple[str, str], dict[str, list[float]]] = {}  # (label, model) → column → one mean per run
    several = _several_targets(s for s, _ in runs)
    for summary, rounds in runs:
        seen: dict[tuple[str, str], dict[str, list[float]]] = {}
        for r in rounds:
            for key, value in r.get("metrics", {}).items():
                parts = key.split("/")
                if len(parts) == 4 and parts[:2] == ["server", "align"]:
                    row = seen.setdefault((_label(summary, r["strategy"], several), parts[2]), {})
                    row.setdefault(parts[3], []).append(value)
        for pair, cols in seen.items():
            for col, values in cols.items():
                per.setdefault(pair, {}).setdefault(col, []).append(statistics.fmean(values))
    if not per:
        return None
    table = Table(title="token alignment, client model ↔ LLM (mean over rounds; ± std over runs)")
    table.add_column("strategy")
    table.add_column("client model")
    for title, _ in ALIGN_COLUMNS:
        table.add_column(title, justify="right")
    for (label, model), cols in per.items():
        table.add_row(label, model, *(_fmt(cols[key]) if key in cols else "—" for _, key in ALIGN_COLUMNS))
    return table


def results_table(*summaries: dict[str, Any]) -> Table:
    """One row per strategy (per privacy target); with several runs (seeds), cells are mean ± std across runs."""
    first = summaries[0]
    kind = first.get("task_kind", "classification")
    groups = _groups(summaries)
    runs = max((len(g) for g in groups.values()), default=1)
    title = f"{first.get('name')} — {first.get('task')}, {first.get('clients')} clients"
    title += f", {len(summaries)} runs" if len(summaries) > 1 else f", run {first.get('run_id')}"
    caption = "± std across runs (seeds)" if runs > 1 else "± std across clients"
    table = Table(title=title, caption=caption)
    table.add_column("strategy")
    cols = _columns(kind)
    for col, _ in cols:
        table.add_column(col, justify="right")
    table.add_column("ε (max)", justify="right")
    table.add_column("n", justify="right")
    table.add_column("wall s", justify="right")
    for label, members in groups.items():
        name = members[0][0]
        variants = metric_variants([e.get("metrics", {}) for _, _, e in members], cols)
        for variant in ["", *variants]:  # a strategy's in-run variants, e.g. DistilDP's hard-label twin
            entries = [e if not variant else {**e, "metrics": variant_metrics(e.get("metrics", {}), variant)}
                       for _, _, e in members]
            cells = []
            for _, spec in cols:
                keys = [pick_metric(e.get("metrics", {}), spec) for e in entries]
                vals = [e["metrics"][k] for e, k in zip(entries, keys, strict=True) if k]
                spread = [e["metrics"][k.replace("/mean", "/std")] for e, k in zip(entries, keys, strict=True)
                          if k and k.endswith("/mean") and k.replace("/mean", "/std") in e["metrics"]]
                cells.append(_fmt(vals, spread))
            eps = [x for x in (epsilon_reached(s, name) for _, s, _ in members) if x is not None]
            cells.append(("∞" if any(math.isinf(x) for x in eps) else f"{max(eps):.2f}") if eps else "—")
            wall = statistics.fmean(e.get("wall_s", 0.0) for e in entries)
            text = (f"  {name}: {variant}" if variant else label) + (
                "" if all(e.get("complete") for e in entries) else " (incomplete)")
            table.add_row(text, *cells, str(len(entries)), "" if variant else f"{wall:.0f}")
    return table


def metric_variants(metrics: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    """Variants v with metrics `client/<v>/<rest>` for a column key `client/<rest>`."""
    rests = [k.removeprefix("client/") for _, spec in cols for k in spec.split("|") if k.startswith("client/")]
    found = {key.split("/")[1] for m in metrics for key in m for rest in rests
             if key.startswith("client/") and key.endswith("/" + rest) and key.count("/") == rest.count("/") + 2}
    return sorted(found)


def variant_metrics(metrics: dict[str, Any], variant: str) -> dict[str, Any]:
    """A variant's metrics under the plain keys (client/<v>/x → client/x)."""
    prefix = f"client/{variant}/"
    return {"client/" + k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def draw_plots(run_dir: Path) -> list[Path]:
    """plots/metrics.png: per-round mean across clients with min–max band, per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = Recorder(run_dir)
    rounds = rec.rounds()
    if not rounds:
        return []
    kind = rec.summary().get("task_kind", "classification")
    keys = ["client/train/loss"] + [k.removesuffix("/mean") for _, k in _columns(kind) if k.startswith("client/")]
    keys = [k for k in keys if any(f"{k}/mean" in r["metrics"] for r in rounds)]
    # the server LLM's own series (CrossLM, FedMKT): round 0 is the LLM before any transfer (llm_start)
    keys += [k for k in LLM_SERIES if any(k in r["metrics"] for r in rounds)]
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for r in rounds:
        by_strategy.setdefault(r["strategy"], []).append(r)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, rows in by_strategy.items():
            if key in LLM_SERIES:
                start = key.replace("server/llm/", "server/llm_start/")
                series = [(r["round"], r["metrics"][key]) for r in rows if key in r["metrics"]]
                if series:
                    pts = [(0, r["metrics"][start]) for r in rows if start in r["metrics"]][:1] + series
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="s", label=name)
                continue
            rows = [r for r in rows if f"{key}/mean" in r["metrics"]]
            if not rows:
                continue
            xs = [r["round"] for r in rows]
            mean = [r["metrics"][f"{key}/mean"] for r in rows]
            lo = [r["metrics"][f"{key}/min"] for r in rows]
            hi = [r["metrics"][f"{key}/max"] for r in rows]
            (line,) = ax.plot(xs, mean, marker="o", label=name)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(key.removeprefix("client/").replace("server/llm/", "LLM "))
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{run_dir.name}: mean over clients (band: min–max)", fontsize=10)
    fig.tight_layout()
    out = run_dir / "plots" / "metrics.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [out]
