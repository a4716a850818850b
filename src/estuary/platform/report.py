"""`estuary report`: the results table (one run, or mean ± std over several runs/seeds) and plots."""

from __future__ import annotations

import math
import statistics
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
GENERATION_COLUMNS = [
    ("SLM own-eval PPL", "client/eval/perplexity/mean"),
    ("SLM test PPL", "client/test/perplexity/mean"),
    ("LLM test PPL", "server/llm/test/perplexity|server/test/perplexity"),
]


def _pick(metrics: dict[str, Any], key: str) -> str | None:
    return next((k for k in key.split("|") if k in metrics), None)


def _epsilon(summary: dict[str, Any], name: str) -> float | None:
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


def results_table(*summaries: dict[str, Any]) -> Table:
    """One row per strategy; with several runs (seeds), cells are mean ± std across runs."""
    first = summaries[0]
    kind = first.get("task_kind", "classification")
    title = f"{first.get('name')} — {first.get('task')}, {first.get('clients')} clients"
    title += f", {len(summaries)} runs" if len(summaries) > 1 else f", run {first.get('run_id')}"
    caption = "± std across runs" if len(summaries) > 1 else "± std across clients"
    table = Table(title=title, caption=caption)
    table.add_column("strategy")
    cols = _columns(kind)
    for col, _ in cols:
        table.add_column(col, justify="right")
    table.add_column("ε (max)", justify="right")
    table.add_column("wall s", justify="right")
    names: list[str] = []
    for s in summaries:
        names += [n for n in s.get("strategies", {}) if n not in names]
    rows = [(name, "") for name in names]
    for name in names:  # a strategy's in-run variants, e.g. DistilDP's hard-label twin (client/hard_labels/...)
        metrics = [s["strategies"][name].get("metrics", {}) for s in summaries if name in s.get("strategies", {})]
        rows[rows.index((name, "")) + 1:rows.index((name, "")) + 1] = [(name, v) for v in _variants(metrics, cols)]
    for name, variant in rows:
        entries = [s["strategies"][name] for s in summaries if name in s.get("strategies", {})]
        if variant:
            entries = [{**e, "metrics": _variant_metrics(e.get("metrics", {}), variant)} for e in entries]
        cells = []
        for _, spec in cols:
            keys = [_pick(e.get("metrics", {}), spec) for e in entries]
            vals = [e["metrics"][k] for e, k in zip(entries, keys, strict=True) if k]
            spread = [e["metrics"][k.replace("/mean", "/std")] for e, k in zip(entries, keys, strict=True)
                      if k and k.endswith("/mean") and k.replace("/mean", "/std") in e["metrics"]]
            cells.append(_fmt(vals, spread))
        eps = [x for x in (_epsilon(s, name) for s in summaries) if x is not None]
        cells.append(("∞" if any(math.isinf(x) for x in eps) else f"{max(eps):.2f}") if eps else "—")
        wall = statistics.fmean(e.get("wall_s", 0.0) for e in entries)
        label = (f"  {name}: {variant}" if variant else name) + (
            "" if all(e.get("complete") for e in entries) else " (incomplete)")
        table.add_row(label, *cells, "" if variant else f"{wall:.0f}")
    return table


def _variants(metrics: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    """Variants v with metrics `client/<v>/<rest>` for a column key `client/<rest>`."""
    rests = [k.removeprefix("client/") for _, spec in cols for k in spec.split("|") if k.startswith("client/")]
    found = {key.split("/")[1] for m in metrics for key in m for rest in rests
             if key.startswith("client/") and key.endswith("/" + rest) and key.count("/") == rest.count("/") + 2}
    return sorted(found)


def _variant_metrics(metrics: dict[str, Any], variant: str) -> dict[str, Any]:
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
    if not keys:
        return []
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for r in rounds:
        by_strategy.setdefault(r["strategy"], []).append(r)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, rows in by_strategy.items():
            rows = [r for r in rows if f"{key}/mean" in r["metrics"]]
            if not rows:
                continue
            xs = [r["round"] for r in rows]
            mean = [r["metrics"][f"{key}/mean"] for r in rows]
            lo = [r["metrics"][f"{key}/min"] for r in rows]
            hi = [r["metrics"][f"{key}/max"] for r in rows]
            (line,) = ax.plot(xs, mean, marker="o", label=name)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(key.removeprefix("client/"))
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
