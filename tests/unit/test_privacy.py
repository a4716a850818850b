"""Client-side DP on a tiny random Llama (CPU, one thread): DP-SGD, the ledger, refusals, bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from estuary.config import PrivacyConfig
from estuary.config.privacy import per_client_delta
from estuary.data.task import Example
from estuary.errors import ConfigError
from estuary.lm.lora import LoraConfig
from estuary.lm.model import adapter_state, attach_lora
from estuary.platform.loading import load_config
from estuary.platform.records import Recorder
from estuary.privacy.dp_sgd import dp_train_steps
from estuary.privacy.ledger import BudgetExceeded, LedgerEntry, PrivacyError, PrivacyLedger
from estuary.wire import Egress
from tests.unit.test_slm import SST2, examples, make_model

EXAMPLES = examples() * 4  # 32
TRAIN = {"batch_size": 4, "lr": 1e-2, "max_length": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


def lora_model(tok, dropout: float = 0.0):  # type: ignore[no-untyped-def]
    return attach_lora(make_model(len(tok)), LoraConfig(r=4, alpha=8, dropout=dropout), seed=1)


def train(model, tok, ledger, cfg, **kw):  # type: ignore[no-untyped-def]
    args = {**TRAIN, "steps": 4, "seed": 0, **kw}
    return dp_train_steps(model, tok, SST2, EXAMPLES, ledger=ledger, dp_cfg=cfg, **args)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("override", "field", "hint"),
    [
        ("privacy.target_epsilon=0", "privacy.target_epsilon", "ε must be > 0"),
        ("privacy.target_epsilon=-2", "privacy.target_epsilon", "null for ε = ∞"),
        ("privacy.budget_epsilon=0", "privacy.budget_epsilon", "ε must be > 0"),
        ("privacy.delta=1", "privacy.delta", "δ must be in (0, 1)"),
        ("privacy.delta=1.5", "privacy.delta", "'1/n^1.1' derives it from each client's data size"),
        ("privacy.delta=null", "privacy.delta", "null no longer means 1/n^1.1; write '1/n^1.1'"),
        ("privacy.delta=often", "privacy.delta", "or '1/n^1.1'"),
        ("privacy.noise_multiplier=0", "privacy.noise_multiplier", "greater than 0"),
        ("privacy.clipping=fast", "privacy.clipping", "'auto', 'ghost', 'ghost_bk' or 'hooks'"),
    ],
)
def test_bad_privacy_settings_are_one_line_errors(override: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("jobs/quickstart.yaml", [override])
    msg = str(err.value)
    assert "\n" not in msg and f"'{field}'" in msg and hint in msg


def test_infinite_epsilon_means_disabled() -> None:
    cfg = load_config("jobs/quickstart.yaml", ["privacy.target_epsilon=.inf"]).privacy
    assert cfg.target_epsilon is None and not cfg.enabled
    assert PrivacyConfig().enabled and PrivacyConfig().budget == 3.0
    assert PrivacyConfig(target_epsilon=None, noise_multiplier=1.0).enabled


def test_model_opacus_cannot_wrap_is_one_line_error() -> None:
    bad = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    from estuary.privacy.stepper import DPStepper

    with pytest.raises(PrivacyError) as err:
        DPStepper(bad, torch.optim.SGD(bad.parameters(), lr=0.1), mode="hooks", sigma=1.0, max_grad_norm=1.0,
                  expected_batch_size=4)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("privacy: Opacus cannot train Sequential")
    assert "BatchNorm" in msg and "privacy.target_epsilon: null" in msg


def test_run_with_a_model_opacus_cannot_train_stops_before_any_actor(
    tmp_path, tiny_model_dir, capsys  # type: ignore[no-untyped-def]
) -> None:
    import yaml

    from estuary.cli import main
    from estuary.platform.preflight import uses_privacy
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path, tiny_model_dir, method="dp_standalone", baselines=["standalone"],
                   training={"lora": {"targets": ["embed_tokens", "q_proj"]}})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert uses_privacy(load_config(base=job))
    assert not uses_privacy(load_config(base={**job, "privacy": {"target_epsilon": None}}))
    assert not uses_privacy(load_config(base={**job, "method": "standalone", "baselines": []}))
    assert main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert "client model" in err and "lora_embedding_A" in err and "training.lora.targets" in err


# ------------------------------------------------------------------------------------- DP-SGD + ledger


def test_ledger_epsilon_matches_opacus_recomputed_from_logged_triples(tok) -> None:  # type: ignore[no-untyped-def]
    from opacus.accountants import RDPAccountant

    model, ledger = lora_model(tok), {}
    cfg = PrivacyConfig(target_epsilon=4.0, delta=1e-3)
    train(model, tok, ledger, cfg, plan_steps=8)
    train(model, tok, ledger, cfg, plan_steps=4, seed=1)
    train(model, tok, ledger, PrivacyConfig(noise_multiplier=2.0, budget_epsilon=20, delta=1e-3), batch_size=8,
          seed=2)
    rows = [json.loads(json.dumps(e.row() if isinstance(e, LedgerEntry) else e)) for e in ledger["entries"]]
    assert [r["op"] for r in rows] == ["dp-sgd"] * 3
    for i in range(3):  # after every operation, from the logged (σ, q, steps) only
        acc = RDPAccountant()
        for r in rows[: i + 1]:
            for _ in range(r["steps"]):
                acc.step(noise_multiplier=r["sigma"], sample_rate=r["sample_rate"])
        assert rows[i]["epsilon_after"] == pytest.approx(acc.get_epsilon(delta=1e-3), rel=0.01)
    assert rows[2]["sample_rate"] == 8 / 32 and rows[2]["sigma"] == 2.0
    assert rows[1]["sigma"] == pytest.approx(rows[0]["sigma"], rel=0.01)  # the plan keeps σ (recalibrated)
    assert 3.9 <= rows[1]["epsilon_after"] <= 4.0  # the plan reaches the target
    led = PrivacyLedger(ledger)
    assert led.steps == 12 and led.data["accountants"]["prv"]["history"] == led.data["accountants"]["rdp"]["history"]


def test_prv_ledger_matches_opacus_prv(tok) -> None:  # type: ignore[no-untyped-def]
    from opacus.accountants import PRVAccountant

    ledger: dict = {}
    r = train(lora_model(tok), tok, ledger, PrivacyConfig(target_epsilon=2.0, delta=1e-3, accountant="prv"))
    acc = PRVAccountant()
    acc.history = [(r.sigma, r.sample_rate, r.steps)]
    assert r.epsilon == pytest.approx(acc.get_epsilon(delta=1e-3), rel=0.01) and r.epsilon <= 2.0
    with pytest.raises(PrivacyError, match="keep privacy.accountant unchanged"):
        train(lora_model(tok), tok, ledger, PrivacyConfig(target_epsilon=2.0, delta=1e-3, accountant="rdp"))


def test_budget_refusal_trains_nothing_and_is_logged(tok) -> None:  # type: ignore[no-untyped-def]
    model, ledger = lora_model(tok), {}
    cfg = PrivacyConfig(noise_multiplier=0.8, target_epsilon=None, budget_epsilon=5.0, delta=1e-3)
    first = train(model, tok, ledger, cfg)
    assert not first.refused and first.epsilon < 5.0
    before = {k: v.clone() for k, v in adapter_state(model).items()}
    snapshot = copy.deepcopy(ledger)
    big = train(model, tok, ledger, cfg, steps=200)  # would overspend: refused before any step
    assert big.refused and "budget 5" in big.refusal and big.steps == 0 and big.losses == []
    assert all(torch.equal(before[k], v) for k, v in adapter_state(model).items())
    assert ledger["accountants"] == snapshot["accountants"] and ledger["epsilon"] == snapshot["epsilon"]
    assert ledger["entries"][-1]["op"] == "refused" and ledger["entries"][-1]["epsilon_after"] == first.epsilon
    with pytest.raises(BudgetExceeded, match="budget 5"):
        big.raise_if_refused()
    # Calibrated: once the target is reached, further DP work is refused, not squeezed in.
    led2: dict = {}
    target = PrivacyConfig(target_epsilon=2.0, delta=1e-3)
    train(model, tok, led2, target)
    again = train(model, tok, led2, target, seed=3)
    assert again.refused and "reached the target" in again.refusal


def test_ghost_bk_and_hooks_clip_identically_and_leave_no_hooks(tok) -> None:  # type: ignore[no-untyped-def]
    results = {}
    for mode in ("ghost", "ghost_bk", "hooks"):
        model = lora_model(tok, dropout=0.1)
        r = train(model, tok, {}, PrivacyConfig(target_epsilon=3.0, delta=1e-3, clipping=mode))
        assert r.clipping == mode and r.entry is not None and r.entry.clipping == mode
        results[mode] = (r.losses, adapter_state(model))
        assert not any(hasattr(p, a) for p in model.parameters() for a in ("grad_sample", "_norm_sample"))
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
        assert not model.training  # restored
    for mode in ("ghost", "ghost_bk"):  # same clipped gradients, same noise: the same training
        assert results[mode][0] == pytest.approx(results["hooks"][0], abs=1e-5)
        for k, v in results[mode][1].items():
            assert torch.allclose(v, results["hooks"][1][k], atol=1e-5), (mode, k)
    auto = train(lora_model(tok), tok, {}, PrivacyConfig(target_epsilon=3.0, delta=1e-3))
    assert auto.clipping == "ghost_bk" and auto.clipping_reason.startswith("auto: ghost clipping")
    assert auto.entry is not None and auto.entry.row()["clipping"] == "ghost_bk"  # the records say which ran
    model = lora_model(tok)
    model.base_model.model.model.embed_tokens.weight.requires_grad_(True)  # not Linear: no book-keeping
    with pytest.raises(PrivacyError, match="LoRA adapter weights only.*embed_tokens"):
        train(model, tok, {}, PrivacyConfig(target_epsilon=3.0, delta=1e-3))
    cfg = PrivacyConfig(target_epsilon=3.0, delta=1e-3, clipping="ghost_bk")
    fallback = train(model, tok, {}, cfg, steps=1, adapter_only=False)
    assert fallback.clipping == "ghost" and "Embedding" in fallback.clipping_reason
    model.base_model.model.model.norm.weight.requires_grad_(True)  # no ghost norm in Opacus: hooks
    hooks = train(model, tok, {}, PrivacyConfig(target_epsilon=3.0, delta=1e-3), steps=1, adapter_only=False)
    assert hooks.clipping == "hooks" and "LlamaRMSNorm" in hooks.clipping_reason


def test_physical_chunks_give_the_whole_batch_update(tok) -> None:  # type: ignore[no-untyped-def]
    """privacy.max_physical_batch_size: chunks add their clipped gradients into one noised step per batch."""
    for mode in ("ghost_bk", "ghost", "hooks"):
        runs = []
        for physical in (None, 3):
            model = lora_model(tok)
            cfg = PrivacyConfig(target_epsilon=3.0, delta=1e-3, clipping=mode, max_physical_batch_size=physical)
            r = train(model, tok, {}, cfg, batch_size=8, steps=3)
            assert r.steps == 3 and len(r.losses) == 3  # one noised (and accounted) step per Poisson batch
            runs.append((r, adapter_state(model)))
        (whole, w_state), (chunked, c_state) = runs
        assert chunked.batch_sizes == whole.batch_sizes and max(whole.batch_sizes) > 3  # some batches chunked
        assert chunked.losses == pytest.approx(whole.losses, abs=1e-5)
        assert chunked.entry is not None and chunked.entry.epsilon_after == whole.epsilon
        for k, v in w_state.items():
            assert torch.allclose(v, c_state[k], atol=1e-5), (mode, k)
        fresh = adapter_state(lora_model(tok))
        assert any(not torch.allclose(v, fresh[k]) for k, v in c_state.items())  # it did train
    with pytest.raises(ConfigError, match="max_physical_batch_size"):
        load_config("jobs/quickstart.yaml", ["privacy.max_physical_batch_size=0"])


def test_dp_training_is_reproducible_and_secure_rng_is_not(tok) -> None:  # type: ignore[no-untyped-def]
    cfg = PrivacyConfig(target_epsilon=3.0, delta=1e-3)
    a, b = train(lora_model(tok), tok, {}, cfg), train(lora_model(tok), tok, {}, cfg)
    assert a.losses == b.losses and a.batch_sizes == b.batch_sizes
    secure = PrivacyConfig(target_epsilon=3.0, delta=1e-3, secure_rng=True)
    s1, s2 = train(lora_model(tok), tok, {}, secure, steps=6), train(lora_model(tok), tok, {}, secure, steps=6)
    assert "secure" in s1.rng and "OS-entropy" in s1.rng  # torchcsprng is not installed here
    assert (s1.batch_sizes, s1.losses) != (s2.batch_sizes, s2.losses)


def test_empty_poisson_batches_are_noised_and_counted(tok) -> None:  # type: ignore[no-untyped-def]
    model, ledger = lora_model(tok), {}
    r = train(model, tok, ledger, PrivacyConfig(target_epsilon=8.0, delta=1e-3), batch_size=1, steps=40)
    assert r.sample_rate == 1 / 32 and len(r.batch_sizes) == 40 and 0 in r.batch_sizes
    assert sum(math.isnan(x) for x in r.losses) == r.batch_sizes.count(0)
    assert PrivacyLedger(ledger).steps == 40 and r.examples_seen == sum(r.batch_sizes)


def test_epochs_and_default_delta(tok) -> None:  # type: ignore[no-untyped-def]
    ledger: dict = {}
    r = dp_train_steps(lora_model(tok), tok, SST2, EXAMPLES, ledger=ledger, dp_cfg=PrivacyConfig(), epochs=1,
                       seed=0, **TRAIN)
    assert PrivacyConfig().delta == 1e-5  # FDKT's published δ, whatever the client's size
    assert r.steps == 8 and r.delta == 1e-5 and ledger["delta_source"] == "privacy.delta"
    with pytest.raises(PrivacyError, match="keep privacy.delta unchanged"):
        train(lora_model(tok), tok, ledger, PrivacyConfig(delta=1e-6))


def test_named_per_client_delta_rule(tok) -> None:  # type: ignore[no-untyped-def]
    assert load_config("jobs/quickstart.yaml", ["privacy.delta=1/n^1.1"]).privacy.delta == "1/n^1.1"
    ledger: dict = {}
    r = train(lora_model(tok), tok, ledger, PrivacyConfig(delta="1/n^1.1"))
    assert r.delta == pytest.approx(per_client_delta(32)) == pytest.approx(1 / 32**1.1)
    assert ledger["delta_source"] == "1/n^1.1 (n=32)"
    assert train(lora_model(tok), tok, ledger, PrivacyConfig(delta="1/n^1.1")).delta == r.delta  # fixed once
    with pytest.raises(PrivacyError, match="keep privacy.delta unchanged"):
        train(lora_model(tok), tok, ledger, PrivacyConfig(delta=1e-5))


def test_delta_at_or_above_one_over_n_is_refused_when_charged(tok) -> None:  # type: ignore[no-untyped-def]
    ledger: dict = {}
    with pytest.raises(PrivacyError) as err:  # 32 examples: 1/n = 0.03125
        train(lora_model(tok), tok, ledger, PrivacyConfig(delta=0.05))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("privacy.delta=0.05 is not below 1/n = 0.0312 for this client (n=32 ")
    assert "set privacy.delta to at most 0.003" in msg and PrivacyLedger(ledger).delta is None  # nothing charged
    assert train(lora_model(tok), tok, {}, PrivacyConfig(delta=0.03)).delta == 0.03  # below 1/n: accepted


def test_delta_at_or_above_one_over_n_is_refused_before_ray(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from estuary.cli import main
    from estuary.data.federated import build_federated_data
    from estuary.platform.preflight import check_delta
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path, tmp_path / "no-model", method="dp_standalone", baselines=["standalone"])
    cfg = load_config(base=job)
    sizes = build_federated_data(cfg.data.model_dump_json(), cfg.clients.count, cfg.seed).sizes()
    small, big = min(n for n, _ in sizes.values()), max(n for n, _ in sizes.values())
    job["privacy"] = {"delta": 1 / big}  # δ = 1/n: refused for the largest client only
    assert small < big
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    for cmd in ("validate", "run"):  # run: refused before Ray starts (no cluster here)
        assert main([cmd, str(tmp_path / "job.yaml"), "--no-progress"][: 2 if cmd == "validate" else 3]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        cid = next(c for c, (n, _) in sizes.items() if n == big)
        assert f"privacy.delta={1 / big:g} is not below 1/n" in err and f"client {cid} (n={big} private" in err, err
    check_delta(load_config(base={**job, "privacy": {"delta": "1/n^1.1"}}))  # the named rule: below 1/n
    check_delta(load_config(base={**job, "privacy": {"target_epsilon": None, "delta": 0.5}}))  # no DP: no δ


def test_disabled_privacy_is_recorded_loudly_and_sticks(tok) -> None:  # type: ignore[no-untyped-def]
    model, ledger = lora_model(tok), {}
    r = train(model, tok, ledger, PrivacyConfig(target_epsilon=None))
    assert r.epsilon == math.inf and r.sigma is None and r.clipping == "none" and len(r.losses) == 4
    row = r.entry.row()  # type: ignore[union-attr]
    assert row["op"] == "non-private" and row["epsilon_after"] == "inf" and "PRIVACY DISABLED" in row["warning"]
    json.dumps(row, allow_nan=False)  # privacy.jsonl stays strict JSON
    later = train(model, tok, ledger, PrivacyConfig(target_epsilon=3.0))
    assert later.refused and "without DP" in later.refusal
    assert PrivacyLedger(ledger).summary()["epsilon"] == "inf"


# ------------------------------------------------------------------------------------ egress & records


def test_synthetic_examples_leave_only_with_a_release_entry() -> None:
    ex = [Example(text="a fine film", label=1)]
    with pytest.raises(ValueError, match="release"):
        Egress(client_id="c000", round=1, strategy="s", synthetic=ex)
    rel = LedgerEntry(op="release", mechanism="post-processing", epsilon_after=2.0, delta=1e-3, accountant="rdp")
    eg = Egress(client_id="c000", round=1, strategy="s", synthetic=ex, privacy=[rel])
    (row,) = eg.privacy_rows()
    assert row["client"] == "c000" and row["round"] == 1 and row["op"] == "release"


def test_privacy_jsonl_appends_and_truncates_on_resume(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = Recorder(tmp_path / "run")
    for r in (1, 2, 3):
        rec.write_privacy([{"strategy": "s", "round": r, "client": "c000", "op": "dp-sgd"}])
    rec.truncate_after(lambda row: row["round"] <= 2)
    assert [r["round"] for r in rec.privacy()] == [1, 2]
