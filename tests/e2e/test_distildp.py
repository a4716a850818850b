"""DistilDP end to end on a tiny setting through the real pipeline: each client's DP teacher (a tiny model with
another vocabulary and a wider hidden state than the students'), its samples and knowledge carried into the
students' tokenisation, the pooled synthetic text, the students' three-signal training and their hard-label
twins, with the DP-SGD student baseline in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estuary.config import ExperimentConfig
from estuary.platform.records import read_jsonl
from estuary.platform.runner import run_experiment
from tests.conftest import build_tiny_model, tiny_job

pytestmark = [pytest.mark.e2e, pytest.mark.ray]


def test_distildp_data_flow(tmp_path: Path, tiny_model_dir: Path, ray_session: None) -> None:
    from estuary.data import find_data_root

    reviews = [line for line in (find_data_root() / "yelp" / "dev.csv").read_text().splitlines()[1:200]]
    teacher = build_tiny_model(tmp_path / "teacher", reviews, vocab_size=800, hidden_size=48)
    job = tiny_job(
        tmp_path, tiny_model_dir, method="distildp", baselines=["dp_standalone"], rounds=1,
        clients={"count": 2, "pool_size": 2},
        data={"task": "yelp-gen", "partition": "iid", "train_size": 60, "test_size": 10, "client_eval_max": 6},
        training={"steps": 3, "batch_size": 4, "max_length": 48},
        privacy={"target_epsilon": 8.0, "delta": 1e-4, "generator_model": str(teacher)},
        method_params={"generator": {"epochs": 1.0, "batch_size": 8, "max_length": 48, "samples_per_label": 5,
                                     "max_new_tokens": 16, "min_words": 2},
                       "topk": 4, "hidden_weight": 0.5},
        baseline_params={"dp_standalone": {"steps": 2}},
    )
    run_dir = run_experiment(ExperimentConfig.model_validate(job), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    [rnd] = [r for r in read_jsonl(run_dir / "rounds.jsonl") if r["strategy"] == "distildp"]
    m = rnd["metrics"]

    synthetic = list(read_jsonl(run_dir / "knowledge" / "synthetic.jsonl"))
    clients = [c for c in read_jsonl(run_dir / "clients.jsonl") if c["strategy"] == "distildp"]
    teach = {c["client"]: c["metrics"] for c in clients if "synthetic/targets" in c["metrics"]}
    distil = {c["client"]: c["metrics"] for c in clients if "distil/samples" in c["metrics"]}
    assert set(teach) == set(distil) == {"c000", "c001"}
    # counts agree: what each teacher sent = what was pooled and recorded = what each student trained on
    sent = sum(t["synthetic/targets"] for t in teach.values())
    assert sent > 0 and m["server/pool/samples"] == sent == len(synthetic)
    assert all(d["distil/samples"] == sent for d in distil.values())
    assert {s["client"] for s in synthetic} <= {"c000", "c001"}
    for t in teach.values():
        assert t["synthetic/targets"] + t["synthetic/unparsed"] == t["synthetic/kept"]
        assert 0.0 <= t["alignment/coverage"] <= 1.0
    # the students used all three signals (the hidden one through the 32 → 48 projection), and their
    # hard-label twins were evaluated on the same real held-out text
    for d in distil.values():
        assert d["train/kd_loss"] > 0 and d["train/lm_loss"] > 0 and d["train/hidden_loss"] > 0
        assert d["test/perplexity"] > 1 and d["hard_labels/test/perplexity"] > 1
        assert d["test/perplexity"] != d["hard_labels/test/perplexity"]
    # egress: only DP samples left the clients; each client's ledger has the teacher's DP training and the release
    privacy = [p for p in read_jsonl(run_dir / "privacy.jsonl") if p["strategy"] == "distildp"]
    for cid in ("c000", "c001"):
        ops = [p["op"] for p in privacy if p["client"] == cid]
        assert "release" in ops and len([o for o in ops if o not in ("release", "refused", "non-private")]) == 1
        assert 0 < summary["privacy"]["distildp"][cid]["epsilon"] <= 8.0 + 1e-6
    cfg = ExperimentConfig.model_validate(job)
    from estuary.data.federated import build_federated_data

    private = {ex.text for c in build_federated_data(cfg.data.model_dump_json(), 2, 0).clients.values()
               for ex in c.train}
    assert not private & {s["text"] for s in synthetic}
    # the DP-SGD student baseline ran in the same run, with its perplexity recorded
    assert summary["strategies"]["dp_standalone"]["metrics"]["client/test/perplexity/mean"] > 1
