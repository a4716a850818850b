"""Canaries planted in private data never leave a client, in any registered method: the client tasks of a
round run in-process on the worker code path (ClientWorker.run_task, no Ray) and every Egress is scanned.

Methods added later are covered as they register. Only the first client phase of a round runs here (a
follow-up phase needs the server LLM); tests/cluster/test_privacy.py runs whole rounds of the methods
that need no server LLM and scans the run records too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from estuary.client.worker import ClientWorker
from estuary.platform.loading import load_config
from estuary.privacy.canary import find_canaries, plant_sst2_canaries
from estuary.registry import available, build_params, get
from estuary.wire import Egress
from tests.conftest import tiny_job

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_METHODS = {"distildp"}  # language-model distillation on text: refuse classification tasks; checked on Yelp below
NO_CLIENT_TASKS = {"llm_centralized"}  # the LLM's non-private bound: the driver pools the data, no client sends
GENERATOR = {"epochs": 1, "batch_size": 4, "max_length": 48, "samples_per_label": 3, "max_new_tokens": 12,
             "min_words": 1, "sample_batch": 8}


def test_no_method_sends_a_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    from estuary.data import find_data_root
    from estuary.data.federated import build_federated_data

    root = tmp_path / "data"
    plant_sst2_canaries(find_data_root(), root, lines=160)
    methods = sorted(m for m in available() if not m.endswith("_test") and m not in TEXT_METHODS | NO_CLIENT_TASKS)
    others = [m for m in methods if m != "dp_synthetic"]
    job = tiny_job(tmp_path, tiny_model_dir, method="dp_synthetic", baselines=others, rounds=1, clients={"count": 2},
                   data={"task": "sst2", "root": str(root), "train_size": 60, "test_size": 16, "client_eval_max": 6},
                   training={"steps": 2, "batch_size": 4, "max_length": 48}, privacy={"target_epsilon": 3.0},
                   method_params={"generator": GENERATOR},
                   baseline_params={"fdkt": {"generator": GENERATOR}} if "fdkt" in methods else {})
    cfg = load_config(base=job)
    private = build_federated_data(cfg.data.model_dump_json(), 2, cfg.seed).client("c000").train
    assert find_canaries(list(private))  # positive control: the private data carries canaries ...
    assert find_canaries(Egress("c000", 1, "s", payload={"oops": private[0].text}))  # ... and a leak is caught
    worker = ClientWorker(cfg.model_dump_json(), {str(tiny_model_dir): str(tiny_model_dir)}, "w", 1)
    sent: dict[str, list[Egress]] = {}
    for name in methods:
        strategy = get(name)(cfg, build_params(name, cfg.params_of(name)))
        for task in strategy.configure_round(1, strategy.select_clients(1, strategy.client_ids())):
            egress, _state = ClientWorker.run_task(worker, type(strategy), task, None)
            sent.setdefault(name, []).append(egress)
    assert set(sent) == set(methods)
    leaks = {name: find_canaries(egs) for name, egs in sent.items() if find_canaries(egs)}
    assert leaks == {}  # metrics, payloads, synthetic examples, ledger rows: no private text in any Egress
    assert any(eg.synthetic for eg in sent["dp_synthetic"]) and all(eg.privacy for eg in sent["dp_synthetic"])


def test_no_text_method_sends_a_canary(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The methods that distil on text (generation tasks) on Yelp reviews that each carry a canary; the teachers'
    whole payload (samples, their task examples, top-k rows, hidden states) is scanned."""
    import csv

    from estuary.data import find_data_root
    from estuary.data.federated import build_federated_data
    from estuary.privacy.canary import make_canary

    src = find_data_root() / "yelp" / "dev.csv"
    with src.open(newline="") as fh:
        rows = list(csv.reader(fh))[:121]
    for i, row in enumerate(rows[1:]):
        words = row[0].split()[:40]
        words.insert(len(words) // 2, make_canary(0, i))
        row[0] = " ".join(words)
    (tmp_path / "data" / "yelp").mkdir(parents=True)
    with (tmp_path / "data" / "yelp" / "dev.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    assert set(available()) >= TEXT_METHODS
    for name in sorted(TEXT_METHODS):
        job = tiny_job(tmp_path, tiny_model_dir, method=name, baselines=[], rounds=1, clients={"count": 2},
                       data={"task": "yelp-gen", "partition": "iid", "root": str(tmp_path / "data"),
                             "train_size": 60, "test_size": 8, "client_eval_max": 4},
                       training={"steps": 2, "batch_size": 4, "max_length": 48}, privacy={"target_epsilon": 3.0},
                       method_params={"generator": GENERATOR, "topk": 4, "teacher_model": None})
        cfg = load_config(base=job)
        private = build_federated_data(cfg.data.model_dump_json(), 2, cfg.seed).client("c000").train
        assert find_canaries(list(private))  # positive control
        worker = ClientWorker(cfg.model_dump_json(), {str(tiny_model_dir): str(tiny_model_dir)}, "w", 1)
        strategy = get(name)(cfg, build_params(name, cfg.params_of(name)))
        sent = [ClientWorker.run_task(worker, type(strategy), task, None)[0]
                for task in strategy.configure_round(1, strategy.select_clients(1, strategy.client_ids()))]
        assert sent and all(eg.privacy for eg in sent) and any(eg.payload.get("targets") for eg in sent)
        assert find_canaries(sent) == [], name
