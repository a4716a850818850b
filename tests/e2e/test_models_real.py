"""Real weights: prepare the built-in aliases from their installed packages and use them.

Uses the default cache (or $ESTUARY_CACHE), so after the first run preparing is a manifest check. A
first conversion takes about 30 s (SmolLM2), 60 s (Gemma) and 60 s (Qwen) on 2 CPU cores. A test skips
when its alias's weights packages are not installed (install them with --no-deps; `estuary models list`
prints the command).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estuary.models import ALIASES, is_installed, prepare_model, resolve_model

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _prepared(alias: str) -> Path:
    source = ALIASES[alias]
    if not is_installed(source):
        pytest.skip(f"weights of {alias} not installed: {source.pip_command}")
    return prepare_model(alias)


def test_smollm2_prepares_and_generates() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _prepared("smollm2-135m")
    assert resolve_model("smollm2-135m", prepare=False) == str(folder)
    manifest = json.loads((folder / "estuary-source.json").read_text())
    assert manifest["gguf_sha256"] == ALIASES["smollm2-135m"].sha256
    assert (folder / "model.safetensors").is_file()

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == 8192
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()


def test_gemma_prepends_bos_after_reload() -> None:
    from transformers import AutoConfig, AutoTokenizer

    folder = _prepared("gemma3-270m")
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.bos_token_id is not None
    assert tok("hi").input_ids[0] == tok.bos_token_id
    assert tok("hi", add_special_tokens=False).input_ids[0] != tok.bos_token_id
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "gemma3_text" and config.vocab_size == 262144
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1, 106]  # <eos>, <end_of_turn>


def test_qwen_sha_and_config() -> None:
    from transformers import AutoConfig

    folder = _prepared("qwen2.5-0.5b")
    manifest = json.loads((folder / "estuary-source.json").read_text())
    assert manifest["gguf_sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "qwen2" and config.vocab_size == 151936


def test_minilm_resolves_to_package_folder() -> None:
    source = ALIASES["minilm-l6"]
    if not is_installed(source):
        pytest.skip(f"weights of minilm-l6 not installed: {source.pip_command}")
    folder = Path(resolve_model("minilm-l6", prepare=False))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
