"""Two-phase rounds (RoundOutcome.then), knowledge records, nested method parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from estuary.errors import ConfigError
from estuary.platform.records import Recorder, read_jsonl
from estuary.registry import build_params, describe
from estuary.wire import Egress, RoundOutcome


def eg(cid: str, **metrics: float) -> Egress:
    return Egress(client_id=cid, round=1, strategy="m", metrics=metrics)


def test_then_merges_phases() -> None:
    first = RoundOutcome({"a": eg("a", x=1.0, y=1.0), "b": eg("b", x=2.0)}, {"c": "boom"}, attempts=4)
    first.results["a"].examples = 24  # e.g. FedAvg: trained in the first phase, evaluated in the later one
    later = RoundOutcome({"a": eg("a", y=5.0)}, {"b": "oom"}, attempts=2)
    both = first.then(later)
    assert both.results["a"].metrics == {"x": 1.0, "y": 5.0}  # the later phase wins on shared keys
    assert both.results["a"].examples == 24  # the round's examples: both phases'
    assert set(both.results) == {"a"} and both.failures == {"b": "oom", "c": "boom"} and both.attempts == 6
    recovered = RoundOutcome({}, {"a": "x"}).then(RoundOutcome({"a": eg("a")}, {}))
    assert recovered.failures == {} and recovered.ok == 1


def test_knowledge_rows_are_truncated_on_resume(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    rec.write_knowledge("synthetic", [{"strategy": "fdkt", "round": r, "text": f"t{r}"} for r in (1, 2, 3)])
    rec.truncate_after(lambda r: r["round"] <= 2)
    assert [r["round"] for r in read_jsonl(tmp_path / "run" / "knowledge" / "synthetic.jsonl")] == [1, 2]


def test_nested_method_params() -> None:
    p = build_params("fdkt", {"filter": {"clusters_per_label": 2}, "augment": {"shots": 1}})
    assert p.filter.clusters_per_label == 2 and p.filter.judge and p.augment.shots == 1
    with pytest.raises(ConfigError, match=r"unknown key 'filter.bogus' in the parameters of 'fdkt'"):
        build_params("fdkt", {"filter": {"bogus": 1}})
    with pytest.raises(ConfigError, match="filter.clusters_per_label"):
        build_params("fdkt", {"filter": {"clusters_per_label": "many"}})
    names = [row[0] for row in describe("fdkt")]
    assert "filter.near_duplicate" in names and "generator.epochs" in names
