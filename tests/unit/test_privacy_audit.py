"""Membership-inference audit: the AUC and its CI, and `estuary audit` on a deliberately overfit tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from estuary.cli import main
from estuary.platform.loading import load_config
from estuary.privacy.mia import auc_with_ci, dp_auc_bound
from tests.conftest import tiny_job

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_and_delong_interval() -> None:
    assert auc_with_ci([3.0, 4.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)
    assert auc_with_ci([1.0, 2.0], [3.0, 4.0])[0] == 0.0
    auc, lo, hi = auc_with_ci([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert auc == 0.5 and 0.0 <= lo < 0.5 < hi <= 1.0
    gen = torch.Generator().manual_seed(0)
    pos, neg = (torch.randn(200, generator=gen) + 0.5).tolist(), torch.randn(200, generator=gen).tolist()
    auc, lo, hi = auc_with_ci(pos, neg)
    assert 0.55 < auc < 0.75 and lo < auc < hi and hi - lo < 0.15
    with pytest.raises(ValueError, match="at least one"):
        auc_with_ci([], [1.0])


def test_dp_auc_bound() -> None:
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)  # no test beats chance
    assert dp_auc_bound(float("inf"), 1e-5) == 1.0
    bounds = [dp_auc_bound(eps, 1e-5) for eps in (0.5, 1.0, 3.0, 8.0)]
    assert bounds == sorted(bounds) and 0.5 < bounds[0] < 0.65 and bounds[-1] > 0.99


def test_audit_cli_dp_generator_leaks_less_than_non_dp(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deliberately overfit: 49 training examples, 120 steps (~20 epochs) at lr 1e-2 on LoRA of every linear
    # layer and the LM head (a frozen random tiny model learns little otherwise). No checkpoint in the run
    # folder: both generators are trained for the audit. Non-members: c000's eval split and c001's data.
    job = tiny_job(
        tmp_path, tiny_model_dir, method="dp_synthetic", baselines=[], clients={"count": 2},
        data={"task": "sst2", "train_size": 96, "test_size": 64, "client_eval_max": 20},
        training={"lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ALL_LINEAR}},
        method_params={"generator": {"lr": 0.01, "batch_size": 8, "max_length": 64}},
        privacy={"target_epsilon": 1.0, "delta": 1e-3},
    )
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    from estuary.strategies.dp_baselines import DPSynthetic

    assert DPSynthetic.name == "dp_synthetic"
    (run_dir / "config.yaml").write_text(load_config(base=job).to_yaml())
    assert main(["audit", str(run_dir), "--members", "32", "--steps", "120"]) == 0
    out = capsys.readouterr().out
    assert "membership inference" in out and "non-dp" in out
    report = json.loads((run_dir / "audit.json").read_text())
    by = {r["generator"]: r for r in report["results"]}
    for r in by.values():
        assert 0.0 <= r["ci_low"] <= r["auc"] <= r["ci_high"] <= 1.0
        assert r["members"] == 32 and r["non_members"] == 32 and r["steps"] == 120
        assert r["source"].startswith("trained for the audit")
    assert by["dp"]["epsilon"] <= 1.0 and by["non-dp"]["epsilon"] == "inf" and report["train_examples"] == 49
    assert by["dp"]["clipping"] == "ghost_bk" and by["dp"]["auc_bound"] == pytest.approx(dp_auc_bound(
        by["dp"]["epsilon"], 1e-3)) and by["non-dp"]["auc_bound"] == 1.0
    print(f"\naudit AUC: dp {by['dp']['auc']:.3f}, non-dp {by['non-dp']['auc']:.3f}")
    assert by["non-dp"]["auc"] > 0.75  # the overfit non-DP generator is attackable (seen: 0.92)
    assert by["dp"]["auc"] < by["non-dp"]["auc"] - 0.2  # the DP one much less so (seen: 0.45)
    assert report["client"] == "c000" and yaml.safe_load((run_dir / "config.yaml").read_text())


def test_audit_of_a_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not an Estuary run folder" in err and "Traceback" not in err
