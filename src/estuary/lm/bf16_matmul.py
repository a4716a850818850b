"""bfloat16 Linear layers on a CPU without native bfloat16, computed by the float32 GEMM with the same arithmetic.

On a CPU without AVX512_BF16, PyTorch's bfloat16 GEMM is a slow path: on an AVX2 host, one thread, a SmolLM2-135M
LoRA training step took ×20.9 float32's time (bench/results/bf16_cpu.json).
Its arithmetic is simple: bfloat16 operands, their products and sums in float32, the result rounded to bfloat16
once. Widening a bfloat16 to float32 is exact and so is the product of two (8-bit significands), so a float32 GEMM
on the widened operands, rounded to bfloat16, computes the same thing; only the order of the float32 sums may
differ, as it does between any two CPUs or thread counts. `python -m bench.bf16_cpu` measures both the time and the
agreement (the share of outputs bitwise equal to torch's own, and each one's error against float64): widened, the
step took ×1.17 float32's time.

`widen_linears(model)` gives each bfloat16 `torch.nn.Linear` of a model on the CPU (every projection and the LM head of
a Hugging Face causal LM), and each `Conv1D` (the transposed Linear of GPT-2 and its kin), a forward that does this;
autograd then runs the backward GEMMs in float32 too and hands bfloat16 gradients back. Weights stay bfloat16 in
memory: a call widens them for its own duration. Widening costs time in proportion to the weights, so a call with fewer
than `MIN_SIDE` rows (decoding a few sequences, where widening the LM head cost more than torch's kernel took in a
one-off timing; bench.bf16_cpu's sampling row measures the net effect) or output features stays with torch. `load_base`
applies it where `emulates(dtype, device, setting)`: bfloat16 weights on a CPU without native bfloat16,
`models.bf16_matmul: auto` (LoRA adapters attached afterwards keep torch's kernels: their rank is small).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from estuary.lm.precision import AUTO, native_bf16

MIN_SIDE = 16  # fewer rows or output features than this: torch's own bfloat16 kernel is as fast or faster


def emulates(dtype: str | torch.dtype, device: str | torch.device = "cpu", setting: str = AUTO) -> bool:
    """Whether a model's bfloat16 Linear layers compute as float32 GEMMs: bfloat16 weights on a CPU that has no
    native bfloat16 (`estuary.lm.precision.native_bf16`), unless `setting` is `torch`."""
    is_bf16 = dtype in ("bfloat16", torch.bfloat16)
    return setting == AUTO and is_bf16 and torch.device(device).type == "cpu" and not native_bf16()


def widened_linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for a bfloat16 layer and input: a float32 GEMM on the widened operands, rounded to bfloat16, where
    it has at least MIN_SIDE rows and output features; torch's own kernel otherwise."""
    rows = x.numel() // max(1, x.shape[-1])
    if x.dtype != torch.bfloat16 or min(rows, layer.out_features) < MIN_SIDE:
        return F.linear(x, layer.weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias).to(torch.bfloat16)


def widened_conv1d(layer: Conv1D, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for a bfloat16 `Conv1D` (weight stored input × output) and input, as `widened_linear` does it."""
    rows = x.numel() // max(1, x.shape[-1])
    if x.dtype != torch.bfloat16 or min(rows, layer.nf) < MIN_SIDE:
        return Conv1D.forward(layer, x)
    out = torch.addmm(layer.bias.float(), x.reshape(-1, x.shape[-1]).float(), layer.weight.float())
    return out.to(torch.bfloat16).view(*x.shape[:-1], layer.nf)


WIDENED: dict[type, Callable[..., torch.Tensor]] = {torch.nn.Linear: widened_linear, Conv1D: widened_conv1d}


def widen_linears(model: torch.nn.Module) -> int:
    """Route the forward of every bfloat16 CPU `torch.nn.Linear` and `Conv1D` in `model` through its widened
    forward (in place); returns how many. Applied by `load_base` where `emulates`."""
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        forward = WIDENED.get(type(module))
        if forward is not None and weight is not None and weight.dtype == torch.bfloat16 \
                and weight.device.type == "cpu":
            module.forward = types.MethodType(forward, module)
            count += 1
    return count
