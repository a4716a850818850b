"""bench/claims.py: the results page regenerates from run records shaped like the real ones (summary.json and
rounds.jsonl as the Recorder writes them), lists what is missing with its command, says what the numbers say,
and `check` catches a hand-edited number."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench.claims import RECORD_FILES, Run, collect, copy_records, load_grid, main, missing, run_cell
from bench.claims_page import render_page, strategy_wall_s

GRID = """
methods:
  fdkt:
    title: FDKT (Li et al. 2024)
    compare: [standalone, fedavg, zero_shot]
    trains_llm: false
    claim: {text: "FDKT ≈ +5 % over local training at ε < 10", baseline: standalone, gain: 5.0}
  fedmkt:
    title: FedMKT (Fan et al. 2025)
    compare: [standalone, fedavg, zero_shot]
    trains_llm: true
    claim: {text: "FedMKT SLMs up and the LLM near centralized", baseline: standalone, gain: 0.0}
  distildp:
    title: DistilDP (Flemings & Annavaram 2024)
    compare: [dp_standalone, "distildp:hard_labels", zero_shot]
    trains_llm: false
    claim: {text: "DistilDP ≥ 9 PPL better than DP baselines at ε = 2 on its set", baseline: dp_standalone,
            gain: 9.0, epsilon: 2}
cells:
  fdkt-a:
    {method: fdkt, task: sst2, scenario: homogeneous, partition: dirichlet, epsilon: 3, job: jobs/fdkt-sst2.yaml,
     set: [models.server=qwen2.5-coder-1.5b], baselines: [zero_shot, standalone, fedavg], seeds: [0, 1, 2]}
  fdkt-b:
    {method: fdkt, task: sst2, scenario: homogeneous, partition: dirichlet, epsilon: 1, job: jobs/fdkt-sst2.yaml,
     set: [privacy.target_epsilon=1], baselines: [], baselines_from: fdkt-a, seeds: [0, 1, 2]}
  fedmkt-a:
    {method: fedmkt, task: sst2, scenario: homogeneous, partition: iid, job: jobs/fedmkt-sst2-homo.yaml,
     set: [data.partition=iid], baselines: [zero_shot, standalone, llm_centralized], seeds: [0, 1]}
  distildp-a:
    {method: distildp, task: yelp-gen, scenario: homogeneous, partition: iid, epsilon: 2,
     job: jobs/distildp-yelp.yaml, set: [], baselines: [zero_shot, dp_standalone], seeds: [0]}
"""


def metrics(acc: float | None = None, f1: float | None = None, ppl: float | None = None,
            **extra: float) -> dict[str, float]:
    m = {}
    if acc is not None:
        m.update({"client/test/accuracy/mean": acc, "client/test/accuracy/std": 0.01, "client/test/accuracy/n": 4.0})
    if f1 is not None:
        m["client/test/macro_f1/mean"] = f1
    if ppl is not None:
        m["client/test/perplexity/mean"] = ppl
    m.update(extra)
    return m


def write_run(results: Path, cell: str, seed: int, strategies: dict[str, dict[str, float]], *,
              run_id: str | None = None, status: str = "complete", eps: float | None = None,
              kind: str = "classification", rounds: list[dict[str, Any]] | None = None) -> Path:
    """A run folder as `estuary run` leaves it (its record files), under results/<cell>/<run id>/."""
    run_id = run_id or f"{cell}-s{seed}-20270101-000000"
    d = results / cell / run_id
    d.mkdir(parents=True)
    summary: dict[str, Any] = {
        "run_id": run_id, "name": cell, "task_kind": kind, "seed": seed, "clients": 4, "status": status,
        "privacy_config": {"target_epsilon": eps, "enabled": eps is not None},
        "strategies": {name: {"complete": True, "rounds": 2, "wall_s": 100.0 + seed, "metrics": m}
                       for name, m in strategies.items()},
    }
    if eps is not None:
        method = next(iter(strategies))
        summary["privacy"] = {method: {"c000": {"epsilon": eps * 0.99}, "c001": {"epsilon": eps * 0.98}}}
    (d / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = rounds or [{"strategy": n, "round": 2, "wall_s": 1.0, "metrics": m} for n, m in strategies.items()]
    (d / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text(f"name: {cell}\nseed: {seed}\n")
    (d / "clients.jsonl").write_text("")
    (d / "privacy.jsonl").write_text("")
    return d


@pytest.fixture()
def grid_path(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    return path


def fdkt_runs(results: Path) -> None:
    for seed, (fd, sa, fa, zs) in enumerate([(0.70, 0.60, 0.68, 0.75), (0.72, 0.62, 0.70, 0.75),
                                              (0.74, 0.64, 0.78, 0.75)]):
        write_run(results, "fdkt-a", seed, {"fdkt": metrics(fd, fd - 0.05), "zero_shot": metrics(
            zs, 0.7, **{"server/test/accuracy": 0.8}), "standalone": metrics(sa, 0.5), "fedavg": metrics(fa, 0.6)},
            eps=3.0)


def page(grid_path: Path, results: Path) -> str:
    grid = load_grid(grid_path)
    runs = collect(results, grid)
    return render_page(grid, runs, missing(grid, runs))


def row(text: str, cell: str, strategy: str) -> list[str]:
    sections = text[text.index("\n## "):]  # past the grid overview, whose rows also start with the cell
    line = next(ln for ln in sections.splitlines() if ln.startswith(f"| `{cell}` | {strategy} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_shows_mean_std_and_n_over_seeds(grid_path: Path, tmp_path: Path) -> None:
    fdkt_runs(tmp_path / "results")
    text = page(grid_path, tmp_path / "results")
    # cell | strategy | n | SLM test acc | SLM test F1 | LLM test acc | ε reached | wall s
    assert row(text, "fdkt-a", "fdkt") == ["`fdkt-a`", "fdkt", "3", "0.720 ± 0.020", "0.670 ± 0.020", "—",
                                           "2.97", "101"]
    assert row(text, "fdkt-a", "fedavg")[2:4] == ["3", "0.720 ± 0.053"]
    assert row(text, "fdkt-a", "zero_shot")[3:6] == ["0.750 ± 0.000", "0.700 ± 0.000", "0.800 ± 0.000"]


def test_the_overview_names_each_seeds_host(grid_path: Path, tmp_path: Path) -> None:
    """Records without a host (older ones) say so; seeds from different hosts are told apart in the cell's row."""
    fdkt_runs(tmp_path / "results")
    for seed, host in ((1, {"cpus": 2, "cpu_capability": "AVX2", "native_bf16": False}),
                       (2, {"cpus": 8, "cpu_capability": "AVX512", "native_bf16": True})):
        summary_path = next((tmp_path / "results" / "fdkt-a").glob(f"*-s{seed}-*")) / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary_path.write_text(json.dumps({**summary, "host": host}))
    text = page(grid_path, tmp_path / "results")
    overview = next(ln for ln in text.splitlines() if ln.startswith("| `fdkt-a` | fdkt |"))
    assert "| 0: not recorded; 1: 2 CPUs, AVX2, no native bfloat16; 2: 8 CPUs, AVX512 |" in overview
    assert "| hosts (seeds: host) |" in text


def test_missing_cells_and_seeds_are_listed_with_their_command(grid_path: Path, tmp_path: Path) -> None:
    fdkt_runs(tmp_path / "results")
    write_run(tmp_path / "results", "fdkt-b", 1, {"fdkt": metrics(0.8, 0.7)}, eps=1.0)
    text = page(grid_path, tmp_path / "results")
    assert "Recorded: 4 of 9 runs." in text
    gaps = text[text.index("Missing:"):]
    assert "- `fdkt-b`, seeds 0, 2: `python -m bench.claims run fdkt-b` (its missing seeds in turn)" in gaps
    assert "`fdkt-a`" not in gaps.split("\n## ")[0]  # every seed of fdkt-a is recorded
    assert "- `distildp-a`, seed 0: `python -m bench.claims run distildp-a`" in text
    assert ("| `fedmkt-a` | fedmkt | sst2, homogeneous, IID | none of 0, 1 | none | `jobs/fedmkt-sst2-homo.yaml` |"
            in text)
    assert ("`estuary run jobs/fdkt-sst2.yaml --set privacy.target_epsilon=1 --set 'baselines=[]' --set seed=S`"
            in text)
    assert "No run of DistilDP is recorded yet" in text


def test_comparison_sentences_follow_the_numbers(grid_path: Path, tmp_path: Path) -> None:
    fdkt_runs(tmp_path / "results")
    write_run(tmp_path / "results", "fdkt-b", 0, {"fdkt": metrics(0.61, 0.6)}, eps=1.0)
    text = page(grid_path, tmp_path / "results")
    para = next(p for p in text.split("\n\n") if p.startswith("Against standalone"))
    # fdkt-a: +10 points over standalone at every seed (a paired spread of 0); fdkt-b takes fdkt-a's seed-0
    # standalone (0.60): one seed
    assert ("Against standalone, the SLM test accuracy is +10.0 points on `fdkt-a` (n = 3; outside the seed "
            "spread of 0.0 points); +1.0 points on `fdkt-b` (n = 1; one seed, spread unknown).") in para
    # against fedavg the per-seed differences are +2, +2, -4 points: mean 0, std 3.5
    assert ("Against `fedavg`, the SLM test accuracy is +0.0 points on `fdkt-a` (n = 3; within the seed spread of "
            "3.5 points)") in para
    assert "Against the zero-shot SLM, the SLM test accuracy is -3.0 points on `fdkt-a`" in para
    assert ("The paper claims “FDKT ≈ +5 % over local training at ε < 10”; the largest gain measured here over "
            "standalone is +10.0 points on `fdkt-a`") in para and para.endswith("at or above the claimed 5 points.")
    assert 3 <= para.count(". ") + 1 <= 5


def test_gains_are_paired_by_seed_so_a_shift_shared_by_every_row_is_not_noise(grid_path: Path,
                                                                             tmp_path: Path) -> None:
    # each seed's test sample is easier than the last: every row moves 10 points, FDKT stays 5 above standalone
    for seed, shift in enumerate((0.0, 0.1, 0.2)):
        write_run(tmp_path / "results", "fdkt-a", seed, {
            "fdkt": metrics(0.70 + shift, 0.6), "standalone": metrics(0.65 + shift, 0.5)}, eps=3.0)
    text = page(grid_path, tmp_path / "results")
    assert "| `fdkt-a` | standalone | 3 | 0.750 ± 0.100 |" in text  # each row's own spread is 10 points
    assert ("Against standalone, the SLM test accuracy is +5.0 points on `fdkt-a` (n = 3; outside the seed spread "
            "of 0.0 points).") in text


def test_generation_cells_compare_perplexity_and_the_hard_label_twin(grid_path: Path, tmp_path: Path) -> None:
    write_run(tmp_path / "results", "distildp-a", 0, {
        "distildp": metrics(ppl=60.0, **{"client/hard_labels/test/perplexity/mean": 64.5}),
        "zero_shot": metrics(ppl=62.8), "dp_standalone": metrics(ppl=62.0)}, eps=2.0, kind="generation")
    text = page(grid_path, tmp_path / "results")
    assert "| cell | strategy | n | SLM test PPL | ε reached | wall s |" in text
    assert row(text, "distildp-a", "distildp: hard_labels")[2:4] == ["1", "64.500"]
    assert "the SLM test perplexity is 2.00 PPL lower on `distildp-a` (n = 1; one seed" in text
    assert "Against its hard-label-only twin, the SLM test perplexity is 4.50 PPL lower" in text
    assert "below the claimed 9 PPL." in text


def test_llm_sentence_reads_round_zero_from_rounds_jsonl(grid_path: Path, tmp_path: Path) -> None:
    for seed in (0, 1):
        llm = {"server/llm/test/accuracy": 0.80 + seed / 100}
        rounds = [{"strategy": "fedmkt", "round": 1, "metrics": {"server/llm_start/test/accuracy": 0.76}},
                  {"strategy": "fedmkt", "round": 2, "metrics": {**metrics(0.8), **llm}}]
        write_run(tmp_path / "results", "fedmkt-a", seed, {
            "fedmkt": metrics(0.8, 0.8, **llm), "zero_shot": metrics(0.7, 0.7, **{"server/test/accuracy": 0.76}),
            "standalone": metrics(0.75, 0.7), "llm_centralized": {"server/llm/test/accuracy": 0.79}}, rounds=rounds)
    text = page(grid_path, tmp_path / "results")
    assert ("The server LLM's test accuracy, before the first round → after the last: 0.760 ± 0.000 → 0.805 ± 0.007 "
            "on `fedmkt-a` (zero-shot LLM 0.760 ± 0.000, `llm_centralized` 0.790 ± 0.000).") in text
    assert "No recorded cell of FedMKT has `fedavg` to compare with." in text
    # a claim of direction only ("SLMs up", gain 0) is met or not, never "at or above the claimed 0 points"
    assert ("standalone is +5.0 points on `fedmkt-a` (n = 2; outside the seed spread of 0.0 points), a gain, "
            "as claimed.") in text and "claimed 0" not in text


def test_latest_complete_run_per_seed_counts(grid_path: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_run(results, "fdkt-b", 0, {"fdkt": metrics(0.5)}, run_id="fdkt-b-s0-20270101-000000")
    write_run(results, "fdkt-b", 0, {"fdkt": metrics(0.9)}, run_id="fdkt-b-s0-20270102-000000")
    write_run(results, "fdkt-b", 1, {"fdkt": metrics(0.9)}, status="running")
    runs = collect(results, load_grid(grid_path))
    assert list(runs["fdkt-b"]) == [0] and runs["fdkt-b"][0].run_id == "fdkt-b-s0-20270102-000000"


def test_check_fails_on_a_hand_edited_number_and_passes_after_write(grid_path: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    results, out = tmp_path / "results", tmp_path / "results.md"
    fdkt_runs(results)
    args = ["--grid", str(grid_path), "--results", str(results), "--page", str(out)]
    assert main([*args, "check"]) == 1  # no page yet
    assert main([*args, "write"]) == 0 and main([*args, "check"]) == 0
    out.write_text(out.read_text().replace("0.720 ± 0.020", "0.760 ± 0.020", 1))
    assert main([*args, "check"]) == 1
    assert "+| `fdkt-a` | fdkt | 3 | 0.720 ± 0.020" in capsys.readouterr().out
    assert main([*args, "write"]) == 0 and main([*args, "check"]) == 0
    write_run(results, "fdkt-b", 0, {"fdkt": metrics(0.61)})  # a new record: the page is stale until written
    assert main([*args, "check"]) == 1


def test_the_committed_page_matches_the_committed_records() -> None:
    assert main(["check"]) == 0, "docs/results.md is stale: run `python -m bench.claims write`"


def test_run_copies_only_the_record_files(grid_path: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "runs", "x", 0, {"fdkt": metrics(0.7)})
    (run / "checkpoints" / "fdkt").mkdir(parents=True)
    (run / "checkpoints" / "fdkt" / "state.pt").write_bytes(b"0")
    (run / "clients.jsonl").write_text("{}\n")
    copied = copy_records(run, tmp_path / "results" / "x" / run.name)
    assert sorted(p.name for p in copied) == sorted(RECORD_FILES)
    assert sorted(p.name for p in (tmp_path / "results" / "x" / run.name).iterdir()) == sorted(RECORD_FILES)
    cell = load_grid(grid_path).cells["fdkt-b"]
    assert run_cell(cell, 2, tmp_path / "results", tmp_path / "runs", dry_run=True) == 0
    assert ("estuary run jobs/fdkt-sst2.yaml --set privacy.target_epsilon=1 --set 'baselines=[]' --set seed=2"
            in capsys.readouterr().out)


def test_diagnostics_come_from_the_records_and_a_reading_may_not_hold_a_number(grid_path: Path,
                                                                                 tmp_path: Path) -> None:
    """A method's diagnostics: a per-round metric summed (or as a share), a final metric and a final-metric
    difference, the client sizes, each mean ± std over seeds; its reading shows below; a reading with a digit is
    refused."""
    diag = """    diagnostics:
      - {label: sizes, summary: client_train_examples}
      - {label: kept share, strategy: fdkt, metric: server/kept, per: server/input}
      - {label: sent per round, strategy: fdkt, metric: server/sent, reduce: mean}
      - {label: acc minus f1, strategy: standalone, metric: client/test/accuracy/mean,
         minus: client/test/macro_f1/mean, scale: 100}
      - {label: final f1, strategy: standalone, final: client/test/macro_f1/mean}
      - {label: no such metric, strategy: standalone, final: client/test/macro_f1/min}
    reading: {text: "the skew in `fdkt-a`, not the transfer.", runs: 2}
"""
    grid_path.write_text(GRID.replace("    claim: {text: \"FDKT", diag + "    claim: {text: \"FDKT", 1))
    results = tmp_path / "results"
    for seed, kept in enumerate([(6, 8), (8, 8)]):
        rounds = [{"strategy": "fdkt", "round": r, "metrics": {"server/kept": kept[r - 1], "server/input": 8,
                                                                "server/sent": 10 * r}} for r in (1, 2)]
        d = write_run(results, "fdkt-a", seed, {"fdkt": metrics(0.7, 0.6), "standalone": metrics(0.6, 0.5 - seed / 10)},
                      rounds=rounds)
        summary = json.loads((d / "summary.json").read_text())
        summary["client_sizes"] = {"c000": [100 + seed, 10], "c001": [200, 10]}
        (d / "summary.json").write_text(json.dumps(summary))
    text = page(grid_path, results)
    assert "| `fdkt-a` | sizes | 2 | 150.2 ± 0.4 |" in text  # 150 and 150.5
    assert "| `fdkt-a` | kept share | 2 | 0.938 ± 0.088 |" in text  # (6+8)/16 and (8+8)/16
    assert "| `fdkt-a` | sent per round | 2 | 15.0 ± 0.0 |" in text
    assert "| `fdkt-a` | acc minus f1 | 2 | 15.0 ± 7.1 |" in text
    assert "| `fdkt-a` | final f1 | 2 | 0.450 ± 0.071 |" in text
    assert "no such metric" not in text  # a run without the metric has no value, and no row shows without one
    assert ("Reading (by whoever ran the grid, from the quantities above): the skew in `fdkt-a`, not the "
            "transfer.") in text
    write_run(results, "fdkt-a", 2, {"fdkt": metrics(0.7, 0.6)})
    assert "; **written against 2 recorded runs of this method, 3 are recorded now" in page(grid_path, results)
    grid_path.write_text(GRID.replace("    claim: {text: \"FDKT", "    reading: {text: gains 5 points, runs: 1}\n"
                                      "    claim: {text: \"FDKT", 1))
    with pytest.raises(ValueError, match="reading holds a number"):
        load_grid(grid_path)


def test_a_malformed_grid_is_one_line_and_exit_2(grid_path: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    claim = "    claim: {text: \"FDKT"
    grid_path.write_text(GRID.replace(claim, "    reading: {text: no runs}\n" + claim, 1))
    args = ["--grid", str(grid_path), "--results", str(tmp_path), "--page", str(tmp_path / "p.md")]
    assert main([*args, "write"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reading is {text: ..., runs: N}" in err


def test_wall_time_of_a_resumed_run_counts_its_rounds_before_the_crash() -> None:
    rounds = [{"strategy": "fdkt", "round": 1, "wall_s": 1296.6}, {"strategy": "fdkt", "round": 2, "wall_s": 746.2},
              {"strategy": "standalone", "round": 1, "wall_s": 40.0}]
    resumed_before_fix = Run("c", "r", 0, {"strategies": {"fdkt": {"wall_s": 746.9}}}, rounds)
    assert strategy_wall_s(resumed_before_fix, "fdkt") == pytest.approx(2042.8)
    whole = Run("c", "r", 0, {"strategies": {"standalone": {"wall_s": 46.7}}}, rounds)
    assert strategy_wall_s(whole, "standalone") == 46.7  # setup and evaluation besides its rounds
