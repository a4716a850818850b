"""Strategy registry and the Strategy template's pure parts (no Ray)."""

from __future__ import annotations

import dataclasses

import pytest

from estuary import registry
from estuary.errors import ConfigError
from estuary.platform.loading import load_config
from estuary.platform.strategy import Strategy, client_ids, summarize_metrics
from estuary.wire import Egress, RoundOutcome


def test_builtins_registered_and_unknown_lists_known() -> None:
    assert {"zero_shot", "standalone", "centralized"} <= set(registry.available())
    with pytest.raises(ConfigError, match="did you mean 'standalone'.*known methods: .*centralized"):
        registry.get("standalon")


def test_register_custom_strategy_and_params() -> None:
    @dataclasses.dataclass
    class MyConfig:
        k: int = dataclasses.field(default=3, metadata={"help": "how many"})

    @registry.register
    class Mine(Strategy):
        name = "mine_test"
        config_class = MyConfig

        def client_step(self, ctx, task):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    assert registry.get("mine_test") is Mine
    assert registry.build_params("mine_test", {"k": "7"}).k == 7
    assert registry.describe("mine_test") == [("k", "3", "how many")]
    with pytest.raises(ConfigError, match="parameter 'k' of 'mine_test'"):
        registry.build_params("mine_test", {"k": "many"})
    with pytest.raises(ValueError, match="taken"):

        @registry.register
        class Other(Mine):  # same name, different class
            name = "mine_test"


def test_client_ids_sort_and_summaries() -> None:
    ids = client_ids(120)
    assert ids[0] == "c000" and ids[-1] == "c119" and ids == sorted(ids)
    res = {
        "a": Egress("a", 1, "s", metrics={"test/accuracy": 0.5}),
        "b": Egress("b", 1, "s", metrics={"test/accuracy": 0.7}),
    }
    m = summarize_metrics(res)
    assert m["test/accuracy/mean"] == pytest.approx(0.6) and m["test/accuracy/min"] == 0.5
    assert m["test/accuracy/std"] == pytest.approx(0.1) and m["test/accuracy/n"] == 2


def test_egress_rejects_nan_metrics() -> None:
    with pytest.raises(ValueError, match="client a: metric 'loss'"):
        Egress("a", 1, "s", metrics={"loss": float("nan")})


def test_evaluate_every_and_quorum_outcome() -> None:
    cfg = load_config(base={"rounds": 5, "evaluation": {"every": 2}})
    s = registry.get("standalone")(cfg)
    assert [s.should_evaluate(r) for r in range(1, 6)] == [False, True, False, True, True]
    assert RoundOutcome(results={}, failures={"x": "e"}).ok == 0


def test_zero_shot_server_engine_is_checked_at_load() -> None:
    assert registry.build_params("zero_shot", {}).server_engine == "auto"
    assert registry.build_params("zero_shot", {"server_engine": "served", "llm_eval_size": 50}).llm_eval_size == 50
    with pytest.raises(ConfigError, match="server_engine must be one of auto, served, transformers .got 'vllm'"):
        registry.build_params("zero_shot", {"server_engine": "vllm"})


def test_the_methods_llm_eval_size_counts_its_default() -> None:
    """zero_shot matches the method's round-0 LLM measurement even when the job leaves llm_eval_size out."""
    from types import SimpleNamespace

    from estuary.strategies.server_llm import method_llm_eval_size

    assert method_llm_eval_size(SimpleNamespace(method="fedmkt", method_params={})) == 100  # FedMKT's default
    assert method_llm_eval_size(SimpleNamespace(method="crosslm", method_params={"llm_eval_size": 40})) == 40
    assert method_llm_eval_size(SimpleNamespace(method="crosslm", method_params={"llm_eval_size": 0})) is None
    assert method_llm_eval_size(SimpleNamespace(method="standalone", method_params={})) is None
