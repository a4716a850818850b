"""bfloat16 against float32 for a client SLM on this CPU: a LoRA training step and sampling, one thread; with
torch's own bfloat16 kernels and with `models.bf16_matmul: auto` (float32 GEMMs with bfloat16 rounding).

    python -m bench.bf16_cpu [--model smollm2-135m] [--steps 2] [--new-tokens 24]

The client work of every method, as a pool worker runs it (one torch thread): SmolLM2-135M with a LoRA adapter
(training.lora's defaults), training steps on batches of 8 × 96 tokens (forward, backward, AdamW), then sampling
`--new-tokens` tokens for 4 prompts with the KV cache (FDKT's and DistilDP's synthetic data). Three variants,
each loading the model afresh: float32 (the baseline, measured in the same process), bfloat16 with
`bf16_matmul: torch`, bfloat16 with `bf16_matmul: auto` (estuary.lm.bf16_matmul; the same as torch where this CPU
runs bfloat16 natively); ratios are seconds over the baseline's. Agreement: one bfloat16 Linear layer 576 → 1536 (a
SmolLM2 MLP projection) on 512 tokens, by torch's kernel and widened (`widened_linear`): the times, the
share of outputs bitwise equal, and each one's error against the float64 product of the same bfloat16 operands;
and the first training step's loss under each variant. `native_bf16` is what `models.dtype: auto` decides by
(estuary.lm.precision). Writes bench/results/bf16_cpu.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import write_result


def measure(path: str, dtype: str, matmul: str, steps: int, new_tokens: int) -> dict[str, float]:
    import torch

    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora, load_base, trainable_parameters

    model, tok = load_base(path, dtype=dtype, bf16_matmul=matmul)
    model = attach_lora(model, LoraConfig(), seed=0)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, tok.vocab_size - 1, (8, 96), generator=gen)
    model.train()
    began = time.perf_counter()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    train_s = (time.perf_counter() - began) / steps
    model.eval()
    prompts = tok(["The movie was", "A great film about", "I did not like", "The food at this place"],
                  return_tensors="pt", padding=True)
    began = time.perf_counter()
    with torch.no_grad():
        model.generate(**prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=50,
                       pad_token_id=tok.pad_token_id)
    sample_s = time.perf_counter() - began
    return {"train_step_s": round(train_s, 3), "first_loss": round(losses[0], 5), "sample_s": round(sample_s, 3),
            "sample_tokens_per_s": round(4 * new_tokens / sample_s, 2)}


def gemm_agreement(m: int = 512, k: int = 576, n: int = 1536, repeat: int = 3) -> dict[str, Any]:
    """One bfloat16 Linear layer (k -> n) on m rows by torch's kernel and widened (`widened_linear`): times, bitwise
    agreement, and each one's error against the float64 product of the same bfloat16 operands."""
    import torch

    from estuary.lm.bf16_matmul import widened_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n, bias=False).bfloat16()
    x = torch.randn(m, k).bfloat16()

    def timed(forward: Any) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            out = forward(x)
            began = time.perf_counter()
            for _ in range(repeat):
                out = forward(x)
        return out, (time.perf_counter() - began) / repeat

    want, torch_s = timed(layer)
    got, auto_s = timed(lambda t: widened_linear(layer, t))
    exact = x.double() @ layer.weight.detach().double().t()

    def error(out: torch.Tensor) -> float:  # mean |out - exact| over mean |exact|
        return round(float((out.double() - exact).abs().mean() / exact.abs().mean()), 7)

    return {"shape": [m, k, n], "torch_s": round(torch_s, 5), "auto_s": round(auto_s, 5),
            "speedup": round(torch_s / auto_s, 1), "bitwise_equal": round(float((got == want).float().mean()), 5),
            "error_vs_float64": {"torch": error(want), "auto": error(got)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()

    import torch

    from estuary.lm.precision import native_bf16, resolve_dtype
    from estuary.models import resolve_model

    torch.set_num_threads(1)
    path = resolve_model(args.model)
    gemm = gemm_agreement()
    print("one GEMM", gemm, flush=True)
    runs: dict[str, Any] = {}
    for name, dtype, matmul in (("float32", "float32", "auto"), ("bfloat16_torch", "bfloat16", "torch"),
                                ("bfloat16_auto", "bfloat16", "auto")):
        runs[name] = measure(path, dtype, matmul, args.steps, args.new_tokens)
        print(name, runs[name], flush=True)
    base = runs["float32"]
    ratios = {name: {"train_step": round(r["train_step_s"] / base["train_step_s"], 2),
                     "sample": round(r["sample_s"] / base["sample_s"], 2)} for name, r in runs.items()}
    print(f"seconds over float32's: {ratios} (native bfloat16: {native_bf16()}; models.dtype auto -> "
          f"{resolve_dtype('auto')})")
    write_result("bf16_cpu", {"model": args.model, "threads": 1, "steps": args.steps, "batch": [8, 96],
                              "new_tokens": args.new_tokens, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "native_bf16": native_bf16(), "auto": resolve_dtype("auto"), "gemm": gemm, "runs": runs,
                              "ratio_over_float32": ratios})


if __name__ == "__main__":
    main()
