"""Model construction: a causal LM and its tokenizer from a local folder, LoRA adapters attached and swapped.

A worker loads one base model, attaches one LoRA adapter, and serves many clients by swapping adapter
weights (`adapter_state` / `load_adapter_state`).
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from estuary.lm.bf16_matmul import emulates, widen_linears
from estuary.lm.encoding import model_device
from estuary.lm.lora import LoraConfig
from estuary.lm.precision import resolve_dtype
from estuary.lm.seeding import rng_scope

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def load_base(
    model_path: str, *, dtype: str = "float32", device: str = "cpu", bf16_matmul: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local HF folder, in eval mode; `dtype` auto resolves for `device`
    (`estuary.lm.precision`). bfloat16 on a CPU without native bfloat16: its Linear layers compute as float32 GEMMs
    with the same arithmetic, unless `bf16_matmul` is torch (`estuary.lm.bf16_matmul`).

    The tokenizer's pad token falls back to EOS; its padding side is set to "right" (this module
    pads by itself, right-aligned, and never relies on it).
    """
    dtype = resolve_dtype(dtype, on_gpu=str(device) != "cpu")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)} or auto")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype])
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    if emulates(dtype, device, bf16_matmul):
        widen_linears(model)
    return model, tokenizer


def attach_lora(model: PreTrainedModel, lora: LoraConfig, *, seed: int) -> PeftModel:
    """Wrap `model` (modified in place) with a fresh LoRA adapter; only adapter weights train.

    The adapter's initial weights depend only on `seed` (lora_A is random, lora_B zero, so the
    adapted model starts equal to the base model).
    """
    with rng_scope(seed, model_device(model)):
        peft_model = get_peft_model(model, lora.peft_config(model))
    peft_model.eval()
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable parameters, in registration order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's weights (keys without the adapter name), detached CPU clones."""
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Replace the adapter's weights with `state` (from `adapter_state`), all of them.

    Raises ValueError if `state` misses any adapter weight or has extra keys, so a swap can never
    leave part of the previous client's adapter in place.
    """
    expected = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(
            f"adapter state does not match the model's adapter: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:2]}), {len(extra)} unexpected (e.g. {sorted(extra)[:2]})"
        )
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter keys not loaded: {unexpected[:3]}")
