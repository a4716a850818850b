"""Real SmolLM2-135M-Instruct on SST-2: LoRA training for a few dozen steps beats zero-shot.

Needs the converted model folder (`~/.cache/estuary/models/smollm2-135m`, or $ESTUARY_SMOLLM2) and
the shared SST-2 data; skipped otherwise. Each seed costs about 60-75 s on 2 quiet CPU cores in
float32 (30 steps of batch 8 at ~1.6 s, 200 dev examples scored at ~17/s); run with `-s` to see
the measurements.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from estuary.lm.encoding import label_token_ids
from estuary.lm.loop import train_steps
from estuary.lm.lora import LoraConfig
from estuary.lm.model import attach_lora, load_base
from estuary.lm.scoring import evaluate, label_scores

pytestmark = pytest.mark.e2e

MODEL_DIR = Path(os.environ.get("ESTUARY_SMOLLM2", "~/.cache/estuary/models/smollm2-135m")).expanduser()
DTYPE = os.environ.get("ESTUARY_E2E_DTYPE", "float32")

# Settings found to lift SST-2 dev accuracy from 0.82 (zero-shot) to 0.89-0.895 on seeds 0, 1, 2.
LORA = LoraConfig(r=8, alpha=16, dropout=0.05, targets=["q_proj", "v_proj"])
TRAIN = {"steps": 30, "batch_size": 8, "lr": 1e-3, "max_length": 128}
TRAIN_SIZE = 512
EVAL_SIZE = 200
MARGIN = 0.04  # required accuracy gain over zero-shot (observed: +0.07)


@pytest.fixture(scope="module")
def sst2() -> Iterator[dict[str, Any]]:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.skip(f"SmolLM2 folder missing: {MODEL_DIR} (convert the model first, or set ESTUARY_SMOLLM2)")
    try:
        from estuary.data import load_splits

        evals = load_splits("sst2", seed=0, eval_size=EVAL_SIZE)
    except Exception as exc:  # pragma: no cover - depends on the shared data folder
        pytest.skip(f"SST-2 data unavailable: {exc}")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base, tok = load_base(str(MODEL_DIR), dtype=DTYPE)
        began = time.perf_counter()
        zero_shot = evaluate(base, tok, evals.task, evals.eval, batch_size=16, max_length=128)
        seconds = time.perf_counter() - began
        print(
            f"\nzero-shot ({DTYPE}): acc={zero_shot['accuracy']:.3f} loss={zero_shot['loss']:.3f} "
            f"n={int(zero_shot['n'])} eval {EVAL_SIZE / seconds:.1f} ex/s"
        )
        yield {"task": evals.task, "eval": evals.eval, "zero_shot": zero_shot, "base": base, "tok": tok}
    finally:
        torch.set_num_threads(threads)


def test_label_words_are_single_tokens_and_paths_agree(sst2: dict[str, Any]) -> None:
    task, tok, base = sst2["task"], sst2["tok"], sst2["base"]
    assert all(len(ids) == 1 for ids in label_token_ids(tok, task))
    few = sst2["eval"][:6]
    fast = label_scores(base, tok, task, few, batch_size=4)
    general = label_scores(base, tok, task, few, batch_size=4, force_general=True)
    assert torch.allclose(fast, general, atol=2e-3 if DTYPE != "float32" else 1e-4)


# CI runs seed 0 (the platform-level claim is also checked by tests/e2e/test_baselines_real.py);
# ESTUARY_E2E_SEEDS=0,1,2 repeats it over seeds (about 70 s each on 2 quiet cores).
SEEDS = [int(s) for s in os.environ.get("ESTUARY_E2E_SEEDS", "0").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_lora_training_beats_zero_shot(sst2: dict[str, Any], seed: int) -> None:
    from estuary.data import load_splits

    task, zero_shot = sst2["task"], sst2["zero_shot"]
    train = load_splits("sst2", seed=seed, train_size=TRAIN_SIZE).train
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        base, tok = load_base(str(MODEL_DIR), dtype=DTYPE)
        model = attach_lora(base, LORA, seed=seed)
        result = train_steps(model, tok, task, train, seed=seed, **TRAIN)
        began = time.perf_counter()
        trained = evaluate(model, tok, task, sst2["eval"], batch_size=16, max_length=128)
        eval_s = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    steps = TRAIN["steps"]
    print(
        f"\nseed {seed} ({DTYPE}): zero-shot acc={zero_shot['accuracy']:.3f} -> trained "
        f"acc={trained['accuracy']:.3f} f1={trained['macro_f1']:.3f} loss {zero_shot['loss']:.3f} -> "
        f"{trained['loss']:.3f}; {result.seconds / steps:.2f} s/step (batch {TRAIN['batch_size']}), "
        f"train {result.seconds:.0f} s, eval {len(sst2['eval']) / eval_s:.1f} ex/s"
    )
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first
    assert trained["loss"] < zero_shot["loss"]
    assert trained["accuracy"] >= zero_shot["accuracy"] + MARGIN
