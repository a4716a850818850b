"""The DP generator and the ClientContext privacy API, on a tiny random Llama without Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from estuary.client.context import ClientContext
from estuary.client.dp_generator import (
    GeneratorConfig,
    fresh_adapter_state,
    generator_examples,
    generator_task,
    sample_synthetic,
    train_dp_generator,
)
from estuary.client.dp_ops import GENERATOR_KEY
from estuary.config import PrivacyConfig
from estuary.data.federated import ClientData
from estuary.data.task import Example
from estuary.lm.model import adapter_state
from estuary.platform.loading import load_config
from estuary.privacy.canary import find_canaries, plant_canaries
from estuary.privacy.ledger import PrivacyLedger
from estuary.wire import ClientState, ClientTask
from tests.unit.test_privacy import lora_model
from tests.unit.test_slm import SST2, examples

GEN = GeneratorConfig(epochs=1, batch_size=4, lr=1e-2, max_length=48, samples_per_label=4, max_new_tokens=12,
                      min_words=1, sample_batch=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_generator_examples_put_the_label_in_a_control_prefix() -> None:
    (g,) = generator_examples(SST2, [Example(text="a fine film", label=1, uid="u")])
    task = generator_task(SST2)
    assert task.prompt(g) == "Label: positive\nText:" and task.completion(g) == " a fine film\n" and g.uid == "u"
    with pytest.raises(ValueError, match="single-text"):
        generator_examples(SST2, [Example(text="a", text_pair="b", label=0)])


def test_fresh_adapter_is_data_independent(tok) -> None:  # type: ignore[no-untyped-def]
    model = lora_model(tok)
    a, b = fresh_adapter_state(model, 5), fresh_adapter_state(model, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not v.any() for k, v in a.items() if "lora_B" in k)
    assert all(v.abs().max() <= 1 / math.sqrt(v.shape[1]) for k, v in a.items() if "lora_A" in k)


def test_dp_generator_samples_filtered_labelled_examples(tok) -> None:  # type: ignore[no-untyped-def]
    model, ledger = lora_model(tok), {}
    tr = train_dp_generator(model, tok, SST2, examples() * 4, ledger=ledger, dp_cfg=PrivacyConfig(delta=1e-3),
                            gen_cfg=GEN, seed=0)
    assert tr.entry is not None and tr.entry.purpose == "generator" and 0 < tr.epsilon <= 3.0
    batch = sample_synthetic(model, tok, SST2, GEN, seed=1)
    stats = batch.stats
    assert stats["generated"] == sum(v for k, v in stats.items() if k not in ("generated",))
    assert {ex.label for ex in batch.examples} <= {0, 1} and len(batch.examples) == stats["kept"] <= 8
    texts = [ex.text for ex in batch.examples]
    assert len(set(texts)) == len(texts) and not any("Label:" in t or "Text:" in t or not t for t in texts)
    again = sample_synthetic(model, tok, SST2, GEN, seed=1)
    assert [e.text for e in again.examples] == texts  # seeded sampling
    strict = sample_synthetic(model, tok, SST2, GeneratorConfig(**{**GEN.__dict__, "min_words": 50}), seed=1)
    assert strict.examples == [] and strict.stats["short"] == strict.stats["generated"]


def _context(tmp_path: Path, tok, model, privacy: dict, train: list[Example], load=None) -> ClientContext:  # type: ignore[no-untyped-def]
    exp = load_config(base={"training": {"steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 48},
                            "privacy": privacy, "output": {"dir": str(tmp_path)}})
    state = ClientState(client_id="c000", model="tiny")
    return ClientContext(exp=exp, state=state, bind=lambda: (model, tok), task=SST2,
                         data=ClientData(tuple(train), tuple(train[:4])), test=(), worker="w", strategy="s", load=load)


def test_configured_generator_model(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    own, other = lora_model(tok), lora_model(tok)
    before = {k: v.clone() for k, v in adapter_state(own).items()}
    loaded: list[str] = []

    def load(spec: str):  # type: ignore[no-untyped-def]
        loaded.append(spec)
        return other, tok

    ctx = _context(tmp_path, tok, own, {"target_epsilon": 4.0, "delta": 1e-3, "generator_model": "gen"},
                   examples() * 4, load=load)
    syn = ctx.dp_synthesize(1, GEN)
    assert not syn.refused and loaded == ["gen"] and ctx.state.extra[GENERATOR_KEY]["model"] == "gen"
    assert all(torch.equal(before[k], v) for k, v in adapter_state(own).items())  # the SLM is untouched
    assert ctx.state.extra[GENERATOR_KEY]["clipping"] == "ghost_bk" and ctx.state.extra[GENERATOR_KEY]["steps"] == 8


def test_client_context_dp_api_updates_state_and_egress(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    model = lora_model(tok)
    private = plant_canaries(examples() * 4)
    ctx = _context(tmp_path, tok, model, {"target_epsilon": 4.0, "delta": 1e-3}, private)
    own = {k: v.clone() for k, v in adapter_state(model).items()}
    res = ctx.dp_train_steps(1, plan_steps=6)
    assert not res.refused and ctx.trained and ctx.state.steps_trained == 3 and ctx.state.optimizer is not None
    trained = adapter_state(model)
    assert any(not torch.equal(own[k], trained[k]) for k in own)
    syn = ctx.dp_synthesize(1, GEN)
    assert syn.training is not None and not syn.refused and GENERATOR_KEY in ctx.state.extra
    assert all(torch.equal(trained[k], v) for k, v in adapter_state(model).items())  # own adapter back
    eg = ctx.egress(ClientTask("c000", 1), synthetic=syn.examples)
    ops = [e.op for e in eg.privacy]
    assert ops == ["dp-sgd", "dp-sgd", "release"]
    assert [e.purpose for e in eg.privacy] == ["train", "generator", "synthetic"]
    assert all(r["client"] == "c000" and r["round"] == 1 and r["strategy"] == "s" for r in eg.privacy_rows())
    assert all(e["client"] == "c000" for e in ctx.state.privacy["entries"])
    assert find_canaries(private) and not find_canaries(eg)  # planted in private data; none on the Egress
    eps = PrivacyLedger(ctx.state.privacy).epsilon
    assert eg.privacy[-1].epsilon_after == eps and eps > res.epsilon
    ctx2 = _context(tmp_path, tok, model, {"target_epsilon": 4.0, "delta": 1e-3}, private)
    ctx2.state = ctx.state  # next round: the generator is reused, no more ε spent
    again = ctx2.dp_synthesize(2, GEN)
    assert again.training is None and again.epsilon == eps
    assert [e.op for e in ctx2.privacy_rows] == ["release"]


def test_refused_generator_sends_nothing(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    model = lora_model(tok)
    ctx = _context(tmp_path, tok, model, {"target_epsilon": None, "noise_multiplier": 0.3, "budget_epsilon": 0.5,
                                          "delta": 1e-3}, examples() * 4)
    syn = ctx.dp_synthesize(1, GEN)
    assert syn.refused and syn.examples == [] and "budget 0.5" in syn.refusal
    assert GENERATOR_KEY not in ctx.state.extra and [e.op for e in ctx.privacy_rows] == ["refused"]
    eg = ctx.egress(ClientTask("c000", 1), synthetic=syn.examples)
    assert eg.synthetic == [] and eg.privacy_rows()[0]["op"] == "refused"


def test_refusal_reaches_the_strategy(tmp_path: Path, tok) -> None:  # type: ignore[no-untyped-def]
    from estuary.strategies.dp_baselines import DPStandalone
    from estuary.wire import RoundOutcome

    ctx = _context(tmp_path, tok, lora_model(tok), {"target_epsilon": None, "noise_multiplier": 0.3,
                                                     "budget_epsilon": 0.5, "delta": 1e-3}, examples() * 4)
    strategy = DPStandalone(ctx.exp)
    eg = strategy.client_step(ctx, ClientTask("c000", 1, evaluate=False))
    assert [e.op for e in eg.refusals] == ["refused"] and eg.metrics["privacy/refused"] == 1.0
    assert not ctx.trained and ctx.state.steps_trained == 0  # nothing trained, nothing overspent
    assert strategy.aggregate(1, RoundOutcome({"c000": eg}, {})) == {"refused": ["c000"]}
