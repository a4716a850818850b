"""What the results page's reasons rest on: per method, measured quantities read from each cell's run records
(rounds.jsonl and summary.json), shown as mean ± std over seeds below the method's table, and the method's
`reading` (text written by whoever ran the grid, which may not hold a number: numbers come from records; the
page flags a reading written against fewer runs than are recorded).

A diagnostic in results/grid.yaml (under a method's `diagnostics:`) is one of
- `{label, strategy, metric[, per][, reduce]}`: a strategy's per-round metric from rounds.jsonl, summed over the
  rounds (`reduce: mean` averages them); with `per`, divided by that metric's sum (a share);
- `{label, strategy, metric, minus[, scale]}`: a strategy's final metric (summary.json) minus another, × scale;
- `{label, strategy, final}`: a strategy's final metric (summary.json) as it is, e.g. `client/test/macro_f1/min`
  (the lowest client's);
- `{label, summary: client_train_examples}`: the mean number of private train examples per client.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.claims import Cell, Run


def check_diagnostic(where: str, d: dict[str, Any]) -> dict[str, Any]:
    """The diagnostic as written, or ValueError naming what is wrong with it."""
    if "label" not in d:
        raise ValueError(f"{where}: a diagnostic needs a label")
    if "summary" in d:
        if d["summary"] != "client_train_examples":
            raise ValueError(f"{where}: summary: {d['summary']!r}; the one known is client_train_examples")
        return d
    if "strategy" not in d or ("metric" not in d and "final" not in d):
        raise ValueError(f"{where}: diagnostic {d['label']!r} needs strategy and metric or final (or summary)")
    if d.get("reduce", "sum") not in ("sum", "mean"):
        raise ValueError(f"{where}: diagnostic {d['label']!r}: reduce is sum or mean")
    return d


@dataclass(frozen=True)
class Reading:
    text: str  # no number outside `code` spans (cell and metric names): numbers come from the records
    runs: int  # the method's recorded runs it was written against; the page flags a reading older than its runs


def check_reading(where: str, raw: Any) -> Reading | None:
    """A method's `reading: {text, runs}` as written, or ValueError naming what is wrong with it."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("text"), str) or not isinstance(raw.get("runs"), int):
        raise ValueError(f"{where}: reading is {{text: ..., runs: N}} (N: the recorded runs it was written against)")
    if re.search(r"\d", re.sub(r"`[^`]*`", "", raw["text"])):
        raise ValueError(f"{where}: reading holds a number ({raw['text'][:60]!r}...); cite a diagnostic instead")
    return Reading(raw["text"], raw["runs"])


def reading_lines(reading: Reading | None, runs: int) -> list[str]:
    """The reading below a method's numbers, flagged when runs were recorded after it was written."""
    if reading is None or not runs:
        return []
    stale = "" if reading.runs == runs else (f"; **written against {reading.runs} recorded run"
                                              f"{'s' if reading.runs != 1 else ''} of this method, {runs} are "
                                              "recorded now: it may no longer hold**")
    return ["", f"Reading (by whoever ran the grid, from the quantities above{stale}): {reading.text}"]


def value(d: dict[str, Any], run: Run) -> float | None:
    """One run's value of a diagnostic (None: the run lacks it)."""
    if d.get("summary") == "client_train_examples":
        sizes = run.summary.get("client_sizes") or {}
        return statistics.fmean(float(s[0]) for s in sizes.values()) if sizes else None
    if "minus" in d or "final" in d:
        metrics = run.summary.get("strategies", {}).get(d["strategy"], {}).get("metrics", {})
        names = [d["final"]] if "final" in d else [d["metric"], d["minus"]]
        if any(name not in metrics for name in names):
            return None
        vals = [float(metrics[name]) for name in names]
        return (vals[0] - sum(vals[1:])) * float(d.get("scale", 1.0))
    rows = [r.get("metrics", {}) for r in run.rounds if r.get("strategy") == d["strategy"]]
    vals = [float(m[d["metric"]]) for m in rows if d["metric"] in m]
    if not vals:
        return None
    total = statistics.fmean(vals) if d.get("reduce", "sum") == "mean" else sum(vals)
    if "per" in d:
        per = sum(float(m[d["per"]]) for m in rows if d["per"] in m)
        return total / per if per else None
    return total


def diagnostics_lines(diagnostics: list[dict[str, Any]], cells: list[Cell], runs: dict[str, dict[int, Run]]
                      ) -> list[str]:
    """The table of a method's diagnostics per recorded cell (mean ± std over seeds, n); [] when none."""
    from bench.claims_page import stat

    rows = []
    for cell in cells:
        for d in diagnostics:
            vals = [v for run in runs.get(cell.name, {}).values() if (v := value(d, run)) is not None]
            if (st := stat(vals)) is not None:
                digits = 1 if abs(st.mean) >= 10 or "minus" in d else 3  # points and counts: one decimal
                text = f"{st.mean:.{digits}f}" + (f" ± {st.std:.{digits}f}" if st.n > 1 else "")
                rows.append(f"| `{cell.name}` | {d['label']} | {st.n} | {text} |")
    if not rows:
        return []
    return ["", "Measured alongside (from the same run records; mean ± std over seeds):", "",
            "| cell | quantity | n | value |", "|---|---|---|---|", *rows]
