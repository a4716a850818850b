"""`training.lora.targets: auto`: PEFT's per-architecture mapping, else the linear projections inside the
attention blocks, else a one-line refusal; named targets pass through unchanged."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from estuary.lm.lora import LoraConfig, auto_targets
from estuary.lm.model import attach_lora


def tiny_llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


class Unlisted(torch.nn.Module):
    """An architecture PEFT's mapping does not know: attention projections under `block.attention`."""

    def __init__(self, with_attention: bool = True, conv1d: bool = False) -> None:
        super().__init__()
        self.config = type("C", (), {"model_type": "not-in-peft"})()
        inner = torch.nn.Module()
        if with_attention:
            inner.attention = torch.nn.ModuleDict({"wq": torch.nn.Linear(4, 4), "wo": torch.nn.Linear(4, 4)})
        if conv1d:
            inner.attention = torch.nn.ModuleDict({"qkv": Conv1D(12, 4), "out": Conv1D(4, 4)})
        inner.mlp = torch.nn.Linear(4, 4)
        self.block = inner


def test_auto_uses_peft_mapping_for_known_architectures() -> None:
    assert auto_targets(tiny_llama()) == (["q_proj", "v_proj"], "PEFT's mapping for llama")
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert auto_targets(gpt2)[0] == ["c_attn"]


def test_auto_falls_back_to_attention_projections_and_refuses_none() -> None:
    assert auto_targets(Unlisted())[0] == ["wo", "wq"]  # the MLP's Linear is not an attention projection
    assert auto_targets(Unlisted(with_attention=False, conv1d=True))[0] == ["out", "qkv"]  # GPT-2-style
    with pytest.raises(ValueError, match=r"^training.lora.targets: auto found no linear projection .*name the"):
        auto_targets(Unlisted(with_attention=False))


def test_default_is_auto_and_named_targets_pass_through() -> None:
    assert LoraConfig().targets == "auto"
    model = attach_lora(tiny_llama(), LoraConfig(), seed=0)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    assert LoraConfig(targets=["k_proj"]).target_modules(tiny_llama()) == ["k_proj"]
    with pytest.raises(ValueError, match="at least one module name"):
        LoraConfig(targets=[])


def test_conv1d_targets_are_adapted_as_stored_input_by_output() -> None:
    """GPT-2's c_attn is a `Conv1D`: PEFT is told so (`fan_in_fan_out`) rather than warning and guessing."""
    import warnings

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert LoraConfig().peft_config(gpt2).fan_in_fan_out is True
    assert LoraConfig().peft_config(tiny_llama()).fan_in_fan_out is False
    ids = torch.tensor([[1, 2, 3, 4]])
    gpt2.eval()
    with torch.no_grad():
        base = gpt2(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = attach_lora(gpt2, LoraConfig(), seed=0)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base)  # lora_B starts at zero
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} \
        == {"c_attn"}
