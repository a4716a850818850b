"""Run records, checkpoints and pool sizing arithmetic (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import torch

from estuary.client.pool import worker_capacity
from estuary.config.clients import ClientResources
from estuary.platform.checkpoint import Checkpointer
from estuary.platform.records import Recorder
from estuary.platform.report import results_table
from estuary.wire import ClientState


def test_recorder_appends_and_truncates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(tmp_path / "run")
    for r in (1, 2, 3):
        rec.write_round({"strategy": "s", "round": r, "metrics": {}})
    with (rec.dir / "rounds.jsonl").open("a") as fh:
        fh.write('{"strategy": "s", "rou')  # torn line from a crash
    assert [r["round"] for r in rec.rounds()] == [1, 2, 3]
    rec.truncate_after(lambda row: row["round"] <= 2)
    assert [r["round"] for r in rec.rounds()] == [1, 2]


def test_kept_rounds_time_carries_into_a_resumed_strategy(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run")
    for strategy, rnd, wall in (("base", 1, 5.0), ("fdkt", 1, 1296.5), ("fdkt", 2, 40.0)):
        rec.write_round({"strategy": strategy, "round": rnd, "wall_s": wall, "metrics": {}})
    rec.truncate_after(lambda row: row["strategy"] == "base" or row["round"] <= 1)  # fdkt checkpointed round 1
    assert rec.rounds_wall_s("fdkt") == 1296.5
    assert rec.rounds_wall_s("base") == 5.0
    assert rec.rounds_wall_s("other") == 0.0


def test_checkpoint_round_trip_keeps_latest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ck = Checkpointer(tmp_path, keep=2)
    state = ClientState("c000", "m", adapter={"w": torch.arange(4.0)}, optimizer={"step": 3}, rounds_trained=2)
    for r in (1, 2, 3):
        ck.save("standalone", r, {"c000": state}, {"version": r}, {"acc": 0.5 + r / 10})
    assert ck.rounds("standalone") == [2, 3] and ck.latest("standalone") == 3
    states, driver, metrics = ck.load("standalone", 3)
    assert torch.equal(states["c000"].adapter["w"], torch.arange(4.0))
    assert states["c000"].rounds_trained == 2 and driver == {"version": 3} and metrics["acc"] == 0.8
    (tmp_path / "checkpoints" / "standalone" / "round-0003" / "COMPLETE").unlink()  # crash mid-save
    assert ck.latest("standalone") == 2


def test_worker_capacity_over_nodes() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 16, "GPU": 2, "client_slot": 8}},
        {"Alive": True, "Resources": {"CPU": 4}},
        {"Alive": False, "Resources": {"CPU": 64, "GPU": 8}},
    ]
    assert worker_capacity(ClientResources(num_cpus=1), nodes) == 20
    assert worker_capacity(ClientResources(num_cpus=1, num_gpus=0.25), nodes) == 8
    assert worker_capacity(ClientResources(num_cpus=2, num_gpus=0.5, custom={"client_slot": 2}), nodes) == 4
    assert worker_capacity(ClientResources(num_cpus=0, num_gpus=1), nodes[1:2]) == 0


def test_results_table_mean_std_over_runs() -> None:
    def s(acc: float) -> dict:
        metrics = {"client/test/accuracy/mean": acc}
        return {
            "name": "x", "task": "sst2", "clients": 4, "run_id": "r", "task_kind": "classification",
            "strategies": {"standalone": {"complete": True, "wall_s": 3, "metrics": metrics}},
        }
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(results_table(s(0.6), s(0.8)))
    text = console.export_text()
    assert "0.700 ± 0.141" in text and "2 runs" in text


def test_results_table_shows_in_run_variants_as_rows() -> None:
    metrics = {"client/test/perplexity/mean": 30.0, "client/hard_labels/test/perplexity/mean": 34.5,
               "client/hard_labels/train/loss/mean": 3.0}
    summary = {"name": "d", "task": "yelp-gen", "clients": 2, "run_id": "r", "task_kind": "generation",
               "strategies": {"distildp": {"complete": True, "wall_s": 9, "metrics": metrics},
                              "dp_standalone": {"complete": True, "wall_s": 5,
                                                "metrics": {"client/test/perplexity/mean": 40.0}}}}
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(results_table(summary))
    lines = console.export_text().splitlines()
    row = next(ln for ln in lines if "distildp: hard_labels" in ln)
    assert "34.500" in row and "30.000" not in row
    assert lines.index(row) == next(i for i, ln in enumerate(lines) if "│ distildp " in ln) + 1


def test_checkpoint_written_in_shards_reads_back_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ck = Checkpointer(tmp_path)
    states = {f"c{i:03d}": ClientState(f"c{i:03d}", "m", adapter={"w": torch.full((2,), float(i))})
              for i in range(5)}
    ids = list(states)
    chunks = ({c: states[c] for c in ids[i : i + 2]} for i in range(0, 5, 2))  # what snapshot_chunks yields
    path = ck.save("s", 1, chunks, {}, {})
    assert sorted(p.name for p in path.glob("clients*.pt")) == ["clients-00000.pt", "clients-00001.pt",
                                                                 "clients-00002.pt"]
    loaded, _, _ = ck.load("s", 1)
    assert list(loaded) == ids and all(torch.equal(loaded[c].adapter["w"], states[c].adapter["w"]) for c in ids)
    states["c000"].adapter["w"] += 1  # the checkpoint holds its own copy (written to disk, not aliased)
    assert float(ck.load("s", 1)[0]["c000"].adapter["w"][0]) == 0.0


def test_results_table_one_row_per_privacy_target_and_baselines_once_per_seed() -> None:
    def s(seed: int, eps: float, acc: float) -> dict:
        return {
            "name": "f", "task": "sst2", "clients": 4, "run_id": f"r{seed}{eps}", "seed": seed,
            "privacy_config": {"target_epsilon": eps, "enabled": True},
            "privacy": {"fdkt": {"c000": {"epsilon": eps * 0.99}}},
            "strategies": {"fdkt": {"complete": True, "wall_s": 3, "metrics": {"client/test/accuracy/mean": acc}},
                           "standalone": {"complete": True, "wall_s": 1,
                                          "metrics": {"client/test/accuracy/mean": 0.5 + seed / 10}}},
        }
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(results_table(s(0, 1, 0.6), s(1, 1, 0.8), s(0, 8, 0.9), s(1, 8, 0.7)))
    lines = console.export_text().splitlines()
    row = {k: next(ln for ln in lines if k in ln) for k in ("fdkt @ ε=1", "fdkt @ ε=8", "standalone")}
    assert "0.700 ± 0.141" in row["fdkt @ ε=1"] and "0.99" in row["fdkt @ ε=1"]
    assert "0.800 ± 0.141" in row["fdkt @ ε=8"] and "7.92" in row["fdkt @ ε=8"]
    # the standalone baseline ran beside both targets with seeds 0 and 1: counted once per seed
    assert "0.550 ± 0.071" in row["standalone"] and row["standalone"].split("│")[-3].strip() == "2"


def test_phases_table_and_llm_plot(tmp_path: Path) -> None:
    from rich.console import Console

    from estuary.platform.report import alignment_table, counts_table, draw_plots, llm_rounds_table, phases_table

    rounds = [{"strategy": "crosslm", "round": r, "phases_s": {"prepare": 2.0, "clients": 5.0, "server": 7.0},
               "metrics": {"client/test/accuracy/mean": 0.6, "client/test/accuracy/min": 0.5,
                           "client/test/accuracy/max": 0.7, "server/llm/test/accuracy": 0.7 + r / 100,
                           **({"server/llm_start/test/accuracy": 0.69} if r == 1 else {})}}
              for r in (1, 2)]
    rec = Recorder(tmp_path)
    for r in rounds:
        rec.write_round(r)
    rec.write_summary({"task_kind": "classification"})
    table = phases_table([({"name": "x"}, rounds), ({"name": "x"}, rounds[:1])])
    assert table is not None
    console = Console(record=True, width=200)
    console.print(table)
    row = next(ln for ln in console.export_text().splitlines() if "crosslm" in ln)
    assert [c.strip() for c in row.split("│")[2:5]] == ["3.0", "7.5", "10.5"]  # (4+2)/2, (10+5)/2, (14+7)/2
    assert phases_table([({"name": "x"}, [{"strategy": "s", "round": 1, "metrics": {}}])]) is None
    counted = [{"strategy": "fdkt", "round": r, "metrics": {"server/filter/synthetic/kept": 10.0 * r,
                                                           "server/select/took_share": 0.5,  # a share: no sum
                                                           "server/llm/adapter_version": 1.0}} for r in (1, 2)]
    table = counts_table([({"name": "x"}, counted), ({"name": "x"}, counted[:1])])
    assert table is not None
    console.print(table)
    row = next(ln for ln in console.export_text().splitlines() if "filter/synthetic/kept" in ln)
    assert row.split("│")[2].strip() == "20.0"  # (10 + 20 + 10) / 2 runs
    assert "took_share" not in console.export_text()
    assert counts_table([({"name": "x"}, rounds)]) is None
    table = llm_rounds_table([({"name": "x"}, rounds), ({"name": "x"}, rounds)])
    assert table is not None
    console.print(table)
    row = next(ln for ln in console.export_text().splitlines() if "test/accuracy" in ln)
    assert [c.strip() for c in row.split("│")[3:6]] == ["0.690 ± 0.000", "0.710 ± 0.000", "0.720 ± 0.000"]
    assert llm_rounds_table([({"name": "x"}, counted)]) is None
    aligned = [{"strategy": "fedmkt", "round": r, "metrics": {"server/align/gemma/seq_coverage": 0.7 + r / 10,
                                                             "server/align/seconds": 2.0}} for r in (1, 2)]
    table = alignment_table([({"name": "x"}, aligned), ({"name": "x"}, aligned[:1])])
    assert table is not None
    console.print(table)
    row = next(ln for ln in console.export_text().splitlines() if "gemma" in ln)
    # run 1: mean of 0.8 and 0.9; run 2: 0.8 → 0.825 ± std(0.85, 0.8); the columns it did not report: —
    assert [c.strip() for c in row.split("│")[3:7]] == ["—", "—", "0.825 ± 0.035", "—"]
    assert alignment_table([({"name": "x"}, counted)]) is None
    (plot,) = draw_plots(tmp_path)
    assert plot.exists() and plot.stat().st_size > 0
