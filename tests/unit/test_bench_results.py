"""bench/distildp_ppl.py keeps every recorded cell: a run with other overrides adds its cells beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_distildp_cells_of_other_overrides_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.common
    from bench.distildp_ppl import merged

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    # a file written before cells carried their overrides: the file-level overrides are theirs
    (tmp_path / "distildp_ppl.json").write_text(json.dumps({"overrides": [], "cells": [
        {"job": "distildp-yelp", "epsilon": "2", "distildp": 60.1},
        {"job": "distildp-e2e", "epsilon": "2", "distildp": 12.7}]}))
    cells = merged([{"job": "distildp-e2e", "epsilon": "2", "distildp": 11.0}], ["method_params.generator.epochs=6"])
    assert [(c["job"], c["distildp"], c["overrides"]) for c in cells] == [
        ("distildp-yelp", 60.1, []), ("distildp-e2e", 12.7, []),
        ("distildp-e2e", 11.0, ["method_params.generator.epochs=6"])]
    (tmp_path / "distildp_ppl.json").write_text(json.dumps({"cells": cells}))
    again = merged([{"job": "distildp-e2e", "epsilon": "2", "distildp": 10.5}], [])  # same job, ε and overrides
    assert [(c["job"], c["distildp"]) for c in again] == [
        ("distildp-yelp", 60.1), ("distildp-e2e", 11.0), ("distildp-e2e", 10.5)]


def test_distildp_seeds_run_apart_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.common
    from bench.distildp_ppl import merged, summarised

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)

    def run(seed: int, dp: float, ours: float) -> dict[str, object]:
        return {"seed": seed, "perplexity": {"zero_shot": 60.0, "dp_standalone": dp, "hard_labels": 65.0,
                                              "distildp": ours}}

    first = merged([summarised("distildp-yelp", "2", [run(0, 62.0, 60.0)])], [])
    (tmp_path / "distildp_ppl.json").write_text(json.dumps({"cells": first}))
    second = merged([summarised("distildp-yelp", "2", [run(1, 64.0, 61.0)])], [])
    (cell,) = second
    assert [r["seed"] for r in cell["runs"]] == [0, 1]
    assert cell["distildp"] == 60.5 and cell["dp_standalone"] == 63.0
    assert cell["distildp_minus_dp_standalone"] == -2.5
    (tmp_path / "distildp_ppl.json").write_text(json.dumps({"cells": second}))
    # a seed run again replaces its own run, not the others
    (cell,) = merged([summarised("distildp-yelp", "2", [run(1, 63.0, 62.0)])], [])
    assert [(r["seed"], r["perplexity"]["distildp"]) for r in cell["runs"]] == [(0, 60.0), (1, 62.0)]
