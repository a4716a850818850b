"""Server training throughput: the Ray Train + DeepSpeed job against plain single-process PEFT training on the
same data and steps, in one run, and the fixed start-up cost of the Ray Train job.

    python -m bench.train_throughput [--model smollm2-135m] [--workers 2] [--stage 2] [--steps 20]
                                     [--micro-batch 4] [--max-length 128] [--distill-weight 0.1]
                                     [--dtype float32] [--name train_throughput]
    python -m bench.train_throughput --smoke      # tiny random model, a few steps: checks the bench runs
    python -m bench.train_throughput --model qwen2.5-coder-1.5b --steps 4 --name train_throughput_coder15

Both sides train the same LoRA adapter (r 8, q/v projections) with the same objective on the same records
(SST-2 prompts for SFT plus distillation records whose top-8 targets favour the next token), for the same
number of optimizer steps with the same global batch (micro-batch x workers): the Ray job splits each batch
over its workers (1 CPU and 1 torch thread each), the plain loop runs it in one process with as many torch
threads as the job has workers. Tokens/s counts non-padding tokens over the step loop only; the fixed cost
of the Ray job is everything else from calling `fit` to having the adapter (preflight, workers, model load,
DeepSpeed init, the checkpoint saves, teardown); step_s is the mean seconds per optimizer step. Results:
bench/results/<--name>.json (default train_throughput.json).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from bench.common import PeakTreeMemory, rss_mib, write_result
from estuary.data import load_splits
from estuary.runtime import worker_env
from estuary.train import ServerTrainer, TrainConfig


def _others(rng: random.Random, vocab: int, token: int, k: int) -> list[int]:
    out: set[int] = set()
    while len(out) < k:
        pick = rng.randrange(vocab)
        if pick != token:
            out.add(pick)
    return sorted(out)


def knowledge(tokenizer: Any, n: int, max_length: int, seed: int = 0) -> list[dict[str, Any]]:
    """n SFT prompts/completions and n distillation records (top-8: next token 0.6, seven others 0.05)."""
    rng = random.Random(seed)
    examples = load_splits("sst2", seed=seed).train[: 2 * n]
    labels = ["negative", "positive"]
    sft = [{"prompt": f"Review: {ex.text}\nSentiment:", "completion": f" {labels[int(ex.label)]}"}
           for ex in examples[:n]]
    vocab = len(tokenizer)
    distill = []
    for ex in examples[n:]:
        ids = tokenizer(ex.text)["input_ids"][:max_length]
        nxt = [*ids[1:], tokenizer.eos_token_id or 0]
        topk = [[t, *_others(rng, vocab, t, 7)] for t in nxt]
        distill.append({"input_ids": ids, "topk_ids": topk,
                        "topk_logprobs": [[math.log(0.6)] + [math.log(0.05)] * 7] * len(ids)})
    return sft + distill


def plain_peft(cfg: TrainConfig, model_path: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline: one process, torch AdamW on the LoRA parameters, the same objective and batches."""
    import torch

    from estuary.lm.objective import objective
    from estuary.train.knowledge import collate, normalize_record
    from estuary.train.per_worker import load_model

    began = time.perf_counter()
    torch.set_num_threads(cfg.workers)
    peft_model, tok, vocab = load_model(cfg, model_path)  # what every Ray Train worker loads
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows = [normalize_record(r) for r in random.Random(cfg.seed).sample(records, len(records))]
    batch_size = cfg.micro_batch_size * cfg.workers * cfg.grad_accum
    setup = time.perf_counter() - began
    obj = cfg.objective
    tokens, losses, train_s = 0, [], 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        start = (step * batch_size) % len(rows)
        chunk = (rows + rows)[start:start + batch_size]
        batch = collate(chunk, tok, cfg.max_length, vocab)
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        parts = objective(logits, batch["labels"], batch["topk_ids"], batch["topk_logprobs"],
                          distill_weight=obj.distill_weight, temperature=obj.temperature, tail_bucket=obj.tail_bucket)
        opt.zero_grad()
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        train_s += time.perf_counter() - t0
        tokens += batch["tokens"]
        losses.append(float(parts.loss.detach()))
    return {"setup_s": round(setup, 2), "train_s": round(train_s, 2), "step_s": round(train_s / cfg.steps, 2),
            "tokens": tokens,
            "tokens_per_s": round(tokens / train_s, 1), "wall_s": round(time.perf_counter() - began, 2),
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4), "rss_mib": round(rss_mib())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage", type=int, default=2, choices=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--records", type=int, default=64, help="SFT records (as many distillation records again)")
    ap.add_argument("--distill-weight", type=float, default=0.1)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 3 steps: checks the bench runs")
    ap.add_argument("--name", default="train_throughput", help="result file name under bench/results/")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="training precision")
    args = ap.parse_args()
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="estuary-train-bench-"))
    model = args.model
    if args.smoke:
        from tests.conftest import build_tiny_model

        texts = [ex.text for ex in load_splits("sst2", seed=0).train[:400]]
        model = str(build_tiny_model(scratch / "tiny", texts))
        args.steps, args.records, args.max_length = 3, 16, 32
    cfg = TrainConfig.load(dict(
        model=model, dtype=args.dtype, workers=args.workers, steps=args.steps, micro_batch_size=args.micro_batch,
        max_length=args.max_length, lr=2e-4, checkpoint_every=args.steps, zero={"stage": args.stage},
        objective={"distill_weight": args.distill_weight}, lora={"r": 8, "alpha": 16, "dropout": 0.0},
    ))
    from transformers import AutoTokenizer

    from estuary.models import resolve_model

    model_path = resolve_model(model)
    records = knowledge(AutoTokenizer.from_pretrained(model_path), args.records, args.max_length)

    ray_began = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, runtime_env={"env_vars": worker_env()},
             _temp_dir=tempfile.mkdtemp(prefix="estb-", dir="/tmp"), log_to_driver=False, logging_level="WARNING")
    ray_init_s = time.perf_counter() - ray_began
    began = time.perf_counter()
    with PeakTreeMemory() as memory:  # the driver, the raylet and the Ray Train workers
        outcome = ServerTrainer(cfg, storage_path=scratch / "train").fit(records, name="bench")
    job_wall = time.perf_counter() - began
    ray.shutdown()
    st = outcome.state
    job = {
        "wall_s": round(job_wall, 2), "fit_s": round(outcome.fit_seconds, 2),
        "preflight_s": round(job_wall - outcome.fit_seconds, 2), "startup_s": round(outcome.startup_seconds, 2),
        "train_s": round(st.train_seconds, 2), "step_s": round(st.train_seconds / args.steps, 2),
        "fixed_cost_s": round(job_wall - st.train_seconds, 2),
        "tokens": st.tokens, "tokens_per_s": round(outcome.tokens_per_second, 1),
        "first_loss": round(st.losses[0], 4), "last_loss": round(st.losses[-1], 4), "ray_init_s": round(ray_init_s, 2),
        "peak_tree_pss_mib": round(memory.peak_mib),
    }
    print(f"ray job: {job}")
    plain = plain_peft(cfg, model_path, records)
    print(f"plain:   {plain}")
    ratios = {
        "train_tokens_per_s_ray_over_plain": round(job["tokens_per_s"] / plain["tokens_per_s"], 3),
        "end_to_end_tokens_per_s_ray_over_plain": round(
            (st.tokens / job_wall) / (plain["tokens"] / plain["wall_s"]), 3),
        "fixed_cost_ray_minus_plain_s": round(job["fixed_cost_s"] - (plain["wall_s"] - plain["train_s"]), 2),
    }
    print(f"ratios:  {ratios}")
    write_result(args.name + ("_smoke" if args.smoke else ""), {
        "config": {"model": model if not args.smoke else "tiny-random-llama", "dtype": args.dtype,
                   "workers": args.workers,
                   "zero_stage": args.stage, "steps": args.steps, "micro_batch": args.micro_batch,
                   "global_batch": cfg.global_batch_size, "max_length": args.max_length,
                   "records": 2 * args.records, "distill_weight": args.distill_weight},
        "ray_deepspeed": job, "plain_peft": plain, "ratios": ratios,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    })


if __name__ == "__main__":
    main()
