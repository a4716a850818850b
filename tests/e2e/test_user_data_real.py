"""End to end on a user's own data: a CSV in its own layout (renamed columns, string labels), described by an
inline task card, through `estuary run` with the real SmolLM2 clients: zero-shot and standalone LoRA."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from estuary.data import find_data_root
from estuary.models import is_prepared
from estuary.platform.loading import load_config
from estuary.platform.runner import run_experiment

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("ray_session")]


def user_csv(path: Path, n: int) -> Path:
    """SST-2 sentences as a user would hold them: `opinion,verdict` with verdict pos/neg."""
    lines = (find_data_root() / "sst2" / "train.txt").read_text(encoding="utf-8").splitlines()[:n]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["opinion", "verdict"])
        for line in lines:
            label, text = line.split(" ", 1)
            w.writerow([text, "pos" if label == "1" else "neg"])
    return path


@pytest.mark.skipif(not is_prepared("smollm2-135m"), reason="run `estuary models prepare smollm2-135m` first")
def test_standalone_on_a_user_csv(tmp_path: Path) -> None:
    user_csv(tmp_path / "reviews.csv", 500)
    job = tmp_path / "job.yaml"
    card = {"name": "reviews", "kind": "classification", "source": {"path": "reviews.csv"},
            "columns": {"text": "opinion", "label": "verdict"}, "labels": {"neg": " negative", "pos": " positive"},
            "template": "Review: {text}\nSentiment:", "subject": "a one-sentence movie review"}
    job.write_text(json.dumps({
        "name": "user-data", "method": "standalone", "baselines": ["zero_shot"], "rounds": 1, "seed": 0,
        "data": {"task": card, "partition": "iid", "test_size": 80, "client_eval_max": 10},
        "clients": {"count": 2, "pool_size": 2},
        "training": {"steps": 20, "batch_size": 8, "lr": 1e-3, "max_length": 80},
        "evaluation": {"server": False, "batch_size": 32},
        "output": {"dir": str(tmp_path / "runs"), "run_id": "user"},
    }))  # JSON is YAML
    run_dir = run_experiment(load_config(job), show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "reviews" and summary["test_size"] == 80
    assert summary["client_sizes"] == {"c000": [140, 10], "c001": [140, 10]}  # 350 train rows, 20% client eval
    s = summary["strategies"]
    zero, trained = (s[n]["metrics"] for n in ("zero_shot", "standalone"))
    assert 0.6 <= zero["client/test/accuracy/mean"] <= 1.0  # SmolLM2 reads the card's prompt: well above chance
    assert trained["client/test/loss/mean"] < zero["client/test/loss/mean"]  # LoRA learnt the user's task
