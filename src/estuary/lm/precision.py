"""The floating-point type a model runs in, and what `auto` means: bfloat16 where the device computes it natively,
float32 elsewhere.

bfloat16 halves the weights' memory. A CUDA GPU (Ampere and later) and a CPU with AVX512_BF16 (Intel Cooper Lake,
Sapphire Rapids and later; AMD Zen 4 and later) run its matmuls natively. On other CPUs PyTorch has no native
bfloat16 GEMM and takes a slow path: on an AVX2-only 2-core host (one torch thread, as a pool worker) a SmolLM2-135M
LoRA training step on 8 × 96 tokens took 171 s in bfloat16 against 8.2 s in float32 (×20.9). Estuary therefore
computes bfloat16 matmuls there as float32 GEMMs with the same arithmetic (`models.bf16_matmul: auto`,
estuary.lm.bf16_matmul), and `models.dtype: auto` and `server.dtype: auto` pick bfloat16 only where it is native;
the preflight says how a job's bfloat16 will run on a CPU without it (`bf16_note`). `python -m bench.bf16_cpu`
measures all three (bench/results/bf16_cpu.json).
"""

from __future__ import annotations

AUTO = "auto"
BF16_MATMUL_HELP = (
    "How a bfloat16 model's Linear layers run on a CPU without native bfloat16 (AVX512_BF16). auto: as float32 "
    "GEMMs on the exactly widened operands, rounded back to bfloat16 (the arithmetic of torch's own bfloat16 GEMM, "
    "float32 sums; only their order may differ), ×17.8 faster per LoRA training step on an AVX2 host "
    "(estuary.lm.bf16_matmul, bench/results/bf16_cpu.json). torch: torch's own bfloat16 kernels. No effect on GPUs, "
    "native CPUs or other dtypes.")


def native_bf16(on_gpu: bool = False) -> bool:
    """Whether the device runs bfloat16 natively: a GPU (CUDA's own answer where a GPU is visible here; a GPU
    requested elsewhere, e.g. from a CPU head node, is taken to be Ampere or later), else the CPU's AVX512_BF16."""
    import torch

    if on_gpu:
        return bool(torch.cuda.is_bf16_supported()) if torch.cuda.is_available() else True
    try:  # torch's own probe of the CPU (cpuinfo)
        return bool(torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, *, on_gpu: bool = False) -> str:
    """`dtype`, with `auto` resolved for the device: bfloat16 where native (`native_bf16`), else float32."""
    if dtype != AUTO:
        return dtype
    return "bfloat16" if native_bf16(on_gpu) else "float32"


def bf16_note(field: str, dtype: str, *, on_gpu: bool = False, matmul: str = AUTO) -> str | None:
    """One line when `field` asks for bfloat16 on a CPU that does not run it natively (None otherwise): how its
    matmuls will run (`matmul`: the job's bf16_matmul setting)."""
    if dtype != "bfloat16" or native_bf16(on_gpu):
        return None
    if matmul == AUTO:
        return (f"{field} bfloat16: this CPU has no native bfloat16 (AVX512_BF16); its bfloat16 Linear layers run as "
                "float32 GEMMs with bfloat16 rounding (bf16_matmul: auto, same arithmetic as torch's bfloat16 GEMM)")
    return (f"{field} bfloat16: this CPU has no native bfloat16 (AVX512_BF16) and bf16_matmul is torch, so its "
            "matmuls take torch's slow path: a LoRA training step about 20× slower than float32 on an AVX2 host "
            "(bench/results/bf16_cpu.json); bf16_matmul: auto computes them as float32 GEMMs")


def host_facts() -> dict[str, object]:
    """What a run's summary records about the driver's machine, so wall times from different hosts are told apart:
    its CPUs, torch's CPU capability (AVX2, AVX512, ...) and whether it runs bfloat16 natively."""
    import os

    import torch

    return {"cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16()}
