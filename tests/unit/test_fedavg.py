"""FedAvg of LoRA adapters (no Ray): the weighted mean by hand, who counts, the checkpointed global adapter, the
refusal of heterogeneous clients."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from estuary.errors import ConfigError
from estuary.platform.checkpoint import Checkpointer
from estuary.platform.loading import load_config
from estuary.runtime import resolve
from estuary.strategies.fedavg import FedAvg, weighted_adapter_mean
from estuary.strategies.fedavg_config import FedAvgConfig
from estuary.wire import Egress, RoundOutcome
from tests.conftest import tiny_job

LAYER = "base_model.model.model.layers.0.self_attn.q_proj"
A, B = f"{LAYER}.lora_A.weight", f"{LAYER}.lora_B.weight"


def adapter(a: list[list[float]], b: list[list[float]], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {A: torch.tensor(a, dtype=dtype), B: torch.tensor(b, dtype=dtype)}


def test_weighted_mean_by_hand() -> None:
    one = adapter([[1.0, 2.0]], [[0.0], [4.0]])  # r = 1, in = 2, out = 2
    two = adapter([[5.0, 6.0]], [[2.0], [0.0]])
    mean = weighted_adapter_mean([one, two], [1, 3])  # n_k = 1 and 3
    assert torch.equal(mean[A], torch.tensor([[4.0, 5.0]]))  # (1·1 + 3·5)/4, (1·2 + 3·6)/4
    assert torch.equal(mean[B], torch.tensor([[1.5], [1.0]]))  # (1·0 + 3·2)/4, (1·4 + 3·0)/4
    # A and B are averaged separately (FedIT): the product of the means is not the mean of the products
    product_of_means = mean[B] @ mean[A]
    mean_of_products = (1 * (one[B] @ one[A]) + 3 * (two[B] @ two[A])) / 4
    assert torch.equal(product_of_means, torch.tensor([[6.0, 7.5], [4.0, 5.0]]))
    assert torch.equal(mean_of_products, torch.tensor([[7.5, 9.0], [1.0, 2.0]]))
    assert torch.equal(weighted_adapter_mean([one], [7])[A], one[A])  # one client: its own adapter
    low = weighted_adapter_mean([adapter([[1.0, 2.0]], [[0.0], [4.0]], torch.bfloat16)] * 2, [1, 1])
    assert low[A].dtype == torch.bfloat16 and torch.equal(low[A], one[A].to(torch.bfloat16))


def test_weighted_mean_refuses_mismatched_adapters_and_weights() -> None:
    one = adapter([[1.0, 2.0]], [[0.0], [4.0]])
    with pytest.raises(ValueError, match="other keys than adapter 0"):
        weighted_adapter_mean([one, {A: one[A]}], [1, 1])
    with pytest.raises(ValueError, match="must be > 0"):
        weighted_adapter_mean([one, one], [1, 0])
    with pytest.raises(ValueError, match="one weight per adapter"):
        weighted_adapter_mean([], [])


def _egress(cid: str, ad: dict[str, torch.Tensor], n: int) -> Egress:
    return Egress(client_id=cid, round=1, strategy="fedavg", payload={"adapter": ad, "n_train": n}, examples=24)


def _fedavg(tmp_path: Path, **over: Any) -> FedAvg:
    cfg = load_config(base=tiny_job(tmp_path, tmp_path / "model", method="fedavg", baselines=[], **over))
    return FedAvg(cfg, FedAvgConfig())


def test_only_succeeded_clients_count_and_none_leaves_the_global_adapter(tmp_path: Path) -> None:
    s = _fedavg(tmp_path)
    one, two = adapter([[1.0, 2.0]], [[0.0], [4.0]]), adapter([[5.0, 6.0]], [[2.0], [0.0]])
    outcome = RoundOutcome({"c000": _egress("c000", one, 10), "c002": _egress("c002", two, 30)},
                           {"c001": "RuntimeError: boom", "c003": "DeadlineExceeded: late"}, late=["c003"])
    agg = s.aggregate(1, outcome)
    assert agg["clients"] == 2 and agg["examples"] == 40
    metrics = s.server_step(1, agg, None)  # type: ignore[arg-type]
    assert metrics == {"fedavg/clients_averaged": 2.0, "fedavg/examples_weighted": 40.0, "fedavg/global_round": 1.0}
    assert s.global_adapter is not None and torch.equal(s.global_adapter[A], torch.tensor([[4.0, 5.0]]))
    before = s.global_adapter
    s.server_step(2, s.aggregate(2, RoundOutcome({}, {"c000": "boom"})), None)  # type: ignore[arg-type]
    assert s.global_adapter is before and s.global_round == 1


def test_tasks_share_one_global_adapter_and_evaluation_follows(tmp_path: Path) -> None:
    s = _fedavg(tmp_path)
    tasks = s.configure_round(1, ["c000", "c002"])
    assert [t.params["global"] for t in tasks] == [None, None] and not any(t.evaluate for t in tasks)
    s.global_adapter = adapter([[1.0, 2.0]], [[0.0], [4.0]])
    tasks = s.configure_round(2, ["c001", "c003"])
    shared = tasks[0].params["global"]
    assert tasks[1].params["global"] is shared  # one copy for the round (an ObjectRef when Ray is up, else the value)
    assert resolve(shared) is s.global_adapter or torch.equal(resolve(shared)[A], s.global_adapter[A])
    outcome = RoundOutcome({"c001": _egress("c001", s.global_adapter, 5), "c003": _egress("c003", s.global_adapter, 5)},
                           {})
    follow = s.configure_followup(2, outcome)
    assert [(t.client_id, t.kind, t.params["global_test"]) for t in follow] == [("c001", "eval", True),
                                                                              ("c003", "eval", False)]
    s.params = FedAvgConfig(evaluate_clients=False)
    assert [t.client_id for t in s.configure_followup(2, outcome)] == ["c001"]


def test_global_adapter_is_checkpointed_and_restored(tmp_path: Path) -> None:
    s = _fedavg(tmp_path)
    s.global_adapter, s.global_round = adapter([[1.0, 2.0]], [[0.0], [4.0]], torch.bfloat16), 3
    ck = Checkpointer(tmp_path / "run")
    path = ck.save("fedavg", 3, {}, s.state_dict(), {"client/train/loss/mean": 0.5})
    assert (path / "strategy.pt").exists() and "global_adapter" not in (path / "strategy.json").read_text()
    _, state, metrics = ck.load("fedavg", 3)
    fresh = _fedavg(tmp_path)
    fresh.load_state_dict(state)
    assert fresh.global_round == 3 and metrics == {"client/train/loss/mean": 0.5}
    assert fresh.global_adapter is not None and fresh.global_adapter.keys() == s.global_adapter.keys()
    assert all(torch.equal(fresh.global_adapter[k], v) and fresh.global_adapter[k].dtype == v.dtype
               for k, v in s.global_adapter.items())
    _fedavg(tmp_path).load_state_dict({})  # a strategy.json of no round yet


@pytest.mark.parametrize("over", [
    {"models": {"client": "smollm2-135m", "per_client": {1: "gemma3-270m"}}},
    {"clients": {"count": 4, "groups": [{"name": "a", "count": 2}, {"name": "b", "count": 2, "model": "gemma3-270m"}]}},
])
def test_heterogeneous_clients_are_refused_in_one_line(tmp_path: Path, over: dict[str, Any]) -> None:
    job = tiny_job(tmp_path, tmp_path / "model", method="standalone", baselines=["fedavg"], **over)
    with pytest.raises(ConfigError) as err:
        load_config(base=job)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config: fedavg averages one LoRA adapter")
    assert "models.per_client / clients.groups[].model" in msg and "gemma3-270m" in msg
    assert "drop fedavg from method/baselines" in msg
    load_config(base={**job, "baselines": ["standalone"]})  # the same clients without fedavg: fine


def test_every_parameter_has_help() -> None:
    for f in dataclasses.fields(FedAvgConfig):
        assert f.metadata.get("help"), f.name
