"""The served LLM's side of the mutual methods (`strategies/server_llm.py`): what its training call and its
evaluation record of their own time."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from estuary.strategies import server_llm


class Clock:
    """A fake `time` for server_llm: monotonic() reads a counter that the stand-ins advance by what they take."""

    def __init__(self) -> None:
        self.now = 100.0
        self.strftime = time.strftime

    def monotonic(self) -> float:
        return self.now

    def take(self, seconds: float) -> None:
        self.now += seconds


def test_the_server_training_call_splits_its_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """train_server_adapter times what a mutual method's server step spends around the fit: stopping the replica
    (release_s), the fit, and publishing the version (redeploy_s), inside its own wall_s; with a fake clock, each
    is exactly the seconds its stand-in took."""
    from estuary import train
    from estuary.train import trainer

    clock = Clock()
    take = clock.take

    @contextlib.contextmanager
    def released():  # type: ignore[no-untyped-def]
        take(7.0)  # the replica stops
        yield True

    class FakeTrainer:
        def __init__(self, config: dict, storage_path: Path | None = None) -> None:
            self.config = config

        def fit(self, records: list, name: str) -> SimpleNamespace:
            take(30.0)
            return SimpleNamespace(adapter_dir=Path("adapter"), losses=[2.0, 1.0], fit_seconds=30.0,
                                   startup_seconds=12.0, tokens_per_second=50.0)

    def publish(path: Path, name: str) -> SimpleNamespace:
        take(21.0)  # the replica starts again with the new version
        return SimpleNamespace(id=f"{name}@v1")

    monkeypatch.setattr(server_llm, "time", clock)
    monkeypatch.setattr(train, "ServerTrainer", FakeTrainer)
    monkeypatch.setattr(trainer, "check_served_model", lambda config, llm: take(2.0))
    server = SimpleNamespace(run_dir=None, running=True, released=released, log=lambda msg: None,
                             llm=SimpleNamespace(publish=publish))
    strategy = SimpleNamespace(name="crosslm", params=SimpleNamespace(adapter_name="crosslm"))
    version, metrics = server_llm.train_server_adapter(strategy, 1, server, [{}] * 3, {}, what="trained")  # type: ignore[arg-type]
    assert version == "crosslm@v1"
    assert (metrics["release_s"], metrics["fit_s"], metrics["redeploy_s"]) == (7.0, 30.0, 21.0)
    assert metrics["wall_s"] == 60.0  # + the served-model check before the release


def test_the_llm_evaluation_carries_its_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_served_llm adds `eval_s` (the round's `llm/eval_s`): here the direct and the channel rule, 40 s
    each on the fake clock; nothing at all when it measures nothing (n = 0)."""
    from estuary.data.datasets import get_task
    from estuary.data.task import Example
    from estuary.knowledge import llm_eval

    clock = Clock()
    monkeypatch.setattr(server_llm, "time", clock)
    rules: list[str] = []

    def classify(llm: Any, task: Any, test: list, adapter: str | None = None, rule: str = "direct") -> dict:
        clock.take(40.0)
        rules.append(rule)
        return {"accuracy": 0.75, "n": len(test)}

    monkeypatch.setattr(llm_eval, "llm_classify", classify)
    server = SimpleNamespace(task=get_task("sst2"), llm=None, test=[Example(text="fine", label=1)] * 4)
    out = server_llm.evaluate_served_llm(server, None, 4, channel=True)  # type: ignore[arg-type]
    assert out == {"test/accuracy": 0.75, "test/channel_accuracy": 0.75, "eval_s": 80.0}
    assert rules == ["direct", "channel"]
    assert server_llm.evaluate_served_llm(server, None, 0) == {}  # type: ignore[arg-type]
