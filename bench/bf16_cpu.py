"""bfloat16 against float32 for a client SLM on this CPU: a LoRA training step and sampling, one thread.

    python -m bench.bf16_cpu [--model smollm2-135m] [--steps 3] [--new-tokens 24]

The client work of every method, as a pool worker runs it (one torch thread): SmolLM2-135M with a LoRA adapter
(training.lora's defaults), training steps on batches of 8 × 96 tokens (forward, backward, AdamW), then sampling
`--new-tokens` tokens for 4 prompts with the KV cache (FDKT's and DistilDP's synthetic data). Each dtype loads the
model afresh; the float32 run is the baseline, measured in the same process, and the ratios are bf16 / fp32
seconds. `native_bf16` is what `models.dtype: auto` decides by (estuary.lm.precision). Writes
bench/results/bf16_cpu.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import write_result


def measure(path: str, dtype: str, steps: int, new_tokens: int) -> dict[str, float]:
    import torch

    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora, load_base, trainable_parameters

    model, tok = load_base(path, dtype=dtype)
    model = attach_lora(model, LoraConfig(), seed=0)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, tok.vocab_size - 1, (8, 96), generator=gen)
    model.train()
    began = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    train_s = (time.perf_counter() - began) / steps
    model.eval()
    prompts = tok(["The movie was", "A great film about", "I did not like", "The food at this place"],
                  return_tensors="pt", padding=True)
    began = time.perf_counter()
    with torch.no_grad():
        model.generate(**prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=50,
                       pad_token_id=tok.pad_token_id)
    sample_s = time.perf_counter() - began
    return {"train_step_s": round(train_s, 3), "sample_s": round(sample_s, 3),
            "sample_tokens_per_s": round(4 * new_tokens / sample_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()

    import torch

    from estuary.lm.precision import native_bf16, resolve_dtype
    from estuary.models import resolve_model

    torch.set_num_threads(1)
    path = resolve_model(args.model)
    runs: dict[str, Any] = {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = measure(path, dtype, args.steps, args.new_tokens)
        print(dtype, runs[dtype], flush=True)
    base, bf = runs["float32"], runs["bfloat16"]
    ratios = {"train_step": round(bf["train_step_s"] / base["train_step_s"], 2),
              "sample": round(bf["sample_s"] / base["sample_s"], 2)}
    print(f"bf16 / fp32 seconds: train step x{ratios['train_step']}, sampling x{ratios['sample']} "
          f"(native bfloat16: {native_bf16()}; models.dtype auto -> {resolve_dtype('auto')})")
    write_result("bf16_cpu", {"model": args.model, "threads": 1, "steps": args.steps, "batch": [8, 96],
                              "new_tokens": args.new_tokens, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "native_bf16": native_bf16(), "auto": resolve_dtype("auto"), "runs": runs,
                              "ratio_bf16_over_fp32": ratios})


if __name__ == "__main__":
    main()
