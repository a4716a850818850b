"""Real SmolLM2-135M: Opacus DP-SGD on its LoRA adapter (ghost clipping and hooks agree), the DP generator,
and the membership audit of a DP and a non-DP generator (one model load). Real Gemma-3-270M: DP-SGD on the
LoRA adapter the heterogeneous FDKT job trains.

Needs the converted model folder (`~/.cache/estuary/models/smollm2-135m`, or $ESTUARY_SMOLLM2) and the
shared SST-2 data; skipped otherwise. Kept small (a few steps of batch ~4 at 48 tokens) so it stays well
under two minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from estuary.client.dp_generator import GeneratorConfig, sample_synthetic, train_dp_generator
from estuary.config import PrivacyConfig
from estuary.lm.lora import LoraConfig
from estuary.lm.model import adapter_state, attach_lora, load_adapter_state, load_base
from estuary.privacy.dp_sgd import dp_train_steps
from estuary.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.e2e

MODEL_DIR = Path(os.environ.get("ESTUARY_SMOLLM2", "~/.cache/estuary/models/smollm2-135m")).expanduser()


@pytest.fixture(scope="module")
def splits():  # type: ignore[no-untyped-def]
    try:
        from estuary.data import load_splits

        return load_splits("sst2", seed=0, train_size=64)
    except Exception as exc:  # pragma: no cover - depends on the shared data folder
        pytest.skip(f"SST-2 data unavailable: {exc}")


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: one thread is faster than two spinning
    yield
    torch.set_num_threads(threads)


def test_dp_sgd_and_dp_generator_on_smollm2(splits, one_thread) -> None:  # type: ignore[no-untyped-def]
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip(f"SmolLM2 folder missing: {MODEL_DIR}")
    base, tok = load_base(str(MODEL_DIR))
    model = attach_lora(base, LoraConfig(r=8, alpha=16, dropout=0.0), seed=0)
    init = adapter_state(model)
    private = list(splits.train[:16])
    cfg = dict(steps=2, batch_size=4, lr=1e-3, max_length=48, seed=0)
    runs = {}
    for mode in ("ghost", "ghost_bk", "hooks"):
        load_adapter_state(model, init)
        ledger: dict = {}
        r = dp_train_steps(model, tok, splits.task, private, ledger=ledger,
                           dp_cfg=PrivacyConfig(target_epsilon=3.0, delta=1e-3, clipping=mode), **cfg)
        assert r.clipping == mode and 0 < r.epsilon <= 3.0 and len(r.losses) == 2
        runs[mode] = r.losses
    assert runs["ghost"] == pytest.approx(runs["hooks"], rel=1e-3, nan_ok=True)
    assert runs["ghost_bk"] == pytest.approx(runs["hooks"], rel=1e-3, nan_ok=True)

    load_adapter_state(model, init)
    gen = GeneratorConfig(batch_size=4, lr=1e-3, max_length=48, samples_per_label=2, oversample=2,
                          max_new_tokens=16, min_words=2, sample_batch=4)
    ledger = {}
    tr = train_dp_generator(model, tok, splits.task, private, ledger=ledger,
                            dp_cfg=PrivacyConfig(target_epsilon=3.0, delta=1e-3), gen_cfg=gen, seed=0, steps=3)
    assert not tr.refused and PrivacyLedger(ledger).steps == 3
    batch = sample_synthetic(model, tok, splits.task, gen, seed=0)
    print(f"\nDP generator samples: {[(e.label, e.text) for e in batch.examples]} stats={batch.stats}")
    assert batch.stats["generated"] >= 4 and all(e.label in (0, 1) for e in batch.examples)
    assert batch.examples, "no synthetic example survived filtering"

    from estuary.platform.audit import audit_generators

    results = audit_generators(model, tok, splits.task, private, private, list(splits.test[:16]),
                               dp_cfg=PrivacyConfig(target_epsilon=3.0, delta=1e-3), gen_cfg=gen, seed=0, steps=3)
    print(f"\naudit: {[(r.generator, round(r.auc, 3), round(r.ci_low, 3), round(r.ci_high, 3)) for r in results]}")
    assert [r.generator for r in results] == ["dp", "non-dp"]
    for r in results:
        assert 0.0 <= r.ci_low <= r.auc <= r.ci_high <= 1.0 and r.members == r.non_members == 16


def test_dp_sgd_trains_gemma3_lora_as_fdkt_hetero_does(splits, one_thread) -> None:  # type: ignore[no-untyped-def]
    """The heterogeneous FDKT job DP-trains a Gemma-3-270M client: Opacus must wrap its LoRA adapter (the
    job's q_proj/v_proj targets), the noised steps must change the adapter and only it, and ghost
    book-keeping must agree with per-example hooks on the same batches."""
    from estuary.models import ALIASES, is_installed, prepare_model

    if not is_installed(ALIASES["gemma3-270m"]):
        pytest.skip(f"weights of gemma3-270m not installed: {ALIASES['gemma3-270m'].pip_command}")
    gemma_dir = prepare_model("gemma3-270m")
    base, tok = load_base(str(gemma_dir))
    frozen = {n: p.detach().clone() for n, p in base.named_parameters() if "layers.0.self_attn" in n}
    model = attach_lora(base, LoraConfig(r=8, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"]),
                            seed=0)
    init = adapter_state(model)
    cfg = dict(steps=2, batch_size=4, lr=1e-2, max_length=40, seed=0)
    losses = {}
    for mode in ("auto", "hooks"):
        load_adapter_state(model, init)
        r = dp_train_steps(model, tok, splits.task, list(splits.train[:16]), ledger={},
                           dp_cfg=PrivacyConfig(target_epsilon=3.0, delta=1e-3, clipping=mode), **cfg)
        assert 0 < r.epsilon <= 3.0 and r.steps == 2 and all(torch.isfinite(torch.tensor(r.losses)))
        losses[r.clipping] = r.losses
    assert set(losses) == {"ghost_bk", "hooks"}  # LoRA A/B are nn.Linear: auto picks book-keeping
    assert losses["ghost_bk"] == pytest.approx(losses["hooks"], rel=1e-3)
    after = adapter_state(model)
    assert any(not torch.equal(after[k], init[k]) for k in init), "the noised steps left the adapter as it was"
    seen = 0
    for name, p in model.named_parameters():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in frozen:
            seen += 1
            assert torch.equal(p.detach(), frozen[key]), f"DP-SGD changed the frozen base weight {name}"
    assert seen == len(frozen) > 0
