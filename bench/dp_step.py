"""DP-SGD step time and peak memory: ghost clipping (Opacus two-pass, and book-keeping) and per-example
hooks vs non-private, in one run.

    python -m bench.dp_step [--model smollm2-135m] [--batch 8] [--max-length 128] [--steps 6] [--warmup 2]
                            [--physical 16]

Modes: nonprivate; ghost (Opacus ghost clipping, two backward passes); ghost_bk (Opacus ghost norms with
book-keeping, one backward pass: what privacy.clipping=auto runs for LoRA); hooks (Opacus per-example
gradients); with --physical N also ghost_bk/pN: ghost_bk with the batch run in physical chunks of N rows
(privacy.max_physical_batch_size), the same noised step at less peak memory.

Ratios are reported on the median and on the fastest (least disturbed) step of each mode.
Same model, batch (B fixed sequences of exactly `max-length` tokens: language modelling on SST-2 text, the
DP generator's workload), LoRA config and optimizer (AdamW) in every mode. Timing: three copies of the
model in one process, one per mode, stepped round-robin so machine load hits all modes alike; the
median step time of each and its ratio to non-private are reported. Memory: each mode again in its own
fresh subprocess; peak resident memory sampled during its steps, minus the resident memory before them
(on CUDA: peak allocated). DP modes use σ = 1, C = 1 (the cost does not depend on them).
Goal: ghost-clipping step ≤ 1.5x the non-private step.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time
from typing import Any

MODES = ("nonprivate", "ghost", "ghost_bk", "hooks")


def modes(args: argparse.Namespace) -> tuple[str, ...]:
    return (*MODES, f"ghost_bk/p{args.physical}") if args.physical else MODES


def _setup(args: argparse.Namespace, mode: str) -> tuple[Any, Any, list[Any]]:
    """(model with LoRA, a `step()` callable, the batch)."""
    import torch

    from estuary.data import load_splits
    from estuary.lm.encoding import padding_id
    from estuary.lm.lora import LoraConfig
    from estuary.lm.model import attach_lora, load_base, trainable_parameters
    from estuary.models import resolve_model
    from estuary.privacy.stepper import DPStepper, per_example_losses

    torch.manual_seed(0)
    base, tok = load_base(resolve_model(args.model), dtype=args.dtype, device=args.device)
    model = attach_lora(base, LoraConfig(r=args.r, alpha=2 * args.r, dropout=0.0,
                                               targets=list(args.targets)), seed=0)
    text = " ".join(ex.text for ex in load_splits("sst2", seed=0, train_size=400).train)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    batch = [(ids[i * args.max_length : (i + 1) * args.max_length], 1) for i in range(args.batch)]
    params = [p for _, p in trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    pad = padding_id(tok)
    model.train()
    if mode == "nonprivate":

        def step() -> float:
            per = per_example_losses(model, batch, pad)
            opt.zero_grad(set_to_none=True)
            per.mean().backward()
            opt.step()
            return float(per.detach().mean())

        return model, step, batch
    clip, _, chunk = mode.partition("/p")
    stepper = DPStepper(model, opt, mode=clip, sigma=1.0, max_grad_norm=1.0, expected_batch_size=args.batch,
                        noise_generator=torch.Generator(device=args.device).manual_seed(0), pad_id=pad,
                        max_physical_batch_size=int(chunk) if chunk else None)
    return model, lambda: stepper.step(batch), batch


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _trim() -> None:
    """Give freed heap back to the OS (glibc), so the resident baseline is not inflated by cached memory."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _memory_child(args: argparse.Namespace, mode: str, out: Any) -> None:
    import torch

    torch.set_num_threads(args.threads)
    _model, step, _ = _setup(args, mode)
    step()  # first step allocates optimizer state and caches
    _trim()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    before_rss = _rss_mib()
    peak = [before_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(args.memory_steps):
        step()
    done.set()
    sampler.join()
    res = {"rss_before_mib": round(before_rss, 1), "peak_rss_mib": round(peak[0], 1),
           "step_peak_over_before_mib": round(peak[0] - before_rss, 1)}
    if cuda:
        res["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["cuda_step_peak_over_before_mib"] = round(res["cuda_peak_allocated_mib"] - before, 1)
    out.put(res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    ap.add_argument("--steps", type=int, default=6, help="measured steps per mode")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--memory-steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--physical", type=int, default=0, help="also ghost_bk in physical chunks of this many rows")
    ap.add_argument("--name", default="dp_step", help="result file name under bench/results/")
    args = ap.parse_args()

    import torch

    from bench.common import write_result

    torch.set_num_threads(args.threads)
    all_modes = modes(args)
    steppers = {mode: _setup(args, mode)[1] for mode in all_modes}
    times: dict[str, list[float]] = {m: [] for m in all_modes}
    losses: dict[str, float] = {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for i in range(args.warmup + args.steps):
        for mode in all_modes:  # round-robin: load changes hit every mode alike
            sync()
            t0 = time.perf_counter()
            losses[mode] = steppers[mode]()
            sync()
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - t0)
        print(f"step {i + 1}: " + ", ".join(f"{m} {times[m][-1]:.3f}s" for m in all_modes if times[m]), flush=True)
    del steppers

    ctx = mp.get_context("spawn")
    memory = {}
    for mode in all_modes:
        q = ctx.Queue()
        proc = ctx.Process(target=_memory_child, args=(args, mode, q))
        proc.start()
        memory[mode] = q.get()
        proc.join()
        print(f"memory {mode}: {memory[mode]}", flush=True)

    base, base_min = statistics.median(times["nonprivate"]), min(times["nonprivate"])
    peak_base = memory["nonprivate"]["peak_rss_mib"]
    table = {}
    for mode in all_modes:
        med = statistics.median(times[mode])
        table[mode] = {
            "step_s_median": round(med, 4), "step_s_min": round(min(times[mode]), 4),
            "step_s_all": [round(t, 4) for t in times[mode]], "ratio_vs_nonprivate": round(med / base, 3),
            "ratio_vs_nonprivate_min": round(min(times[mode]) / base_min, 3),
            "peak_rss_over_nonprivate_mib": round(memory[mode]["peak_rss_mib"] - peak_base, 1),
            "last_loss": round(losses[mode], 4), **memory[mode],
        }
    print(f"\n{'mode':<13}{'median s':>10}{'ratio':>8}{'ratio(min)':>12}{'peak RSS MiB':>14}{'vs non-DP':>11}")
    for mode, m in table.items():
        print(f"{mode:<13}{m['step_s_median']:>10.3f}{m['ratio_vs_nonprivate']:>8.3f}"
              f"{m['ratio_vs_nonprivate_min']:>12.3f}{m['peak_rss_mib']:>14.1f}{m['peak_rss_over_nonprivate_mib']:>+11.1f}")
    ghost_ratio = table["ghost"]["ratio_vs_nonprivate"]
    result = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "threads": args.threads,
        "batch": args.batch, "seq_len": args.max_length, "lora": {"r": args.r, "targets": args.targets},
        "warmup": args.warmup, "steps": args.steps, "sigma": 1.0, "max_grad_norm": 1.0, "modes": table,
        "default_clipping": "ghost_bk (privacy.clipping=auto with LoRA on Linear layers)",
        "goal": {"ghost_step_le_1.5x_nonprivate": ghost_ratio <= 1.5, "ghost_ratio": ghost_ratio,
                 "ghost_bk_step_le_1.5x_nonprivate": table["ghost_bk"]["ratio_vs_nonprivate"] <= 1.5,
                 "ghost_bk_ratio": table["ghost_bk"]["ratio_vs_nonprivate"],
                 "hooks_ratio": table["hooks"]["ratio_vs_nonprivate"]},
    }
    if args.physical:
        chunked, whole = table[all_modes[-1]], table["ghost_bk"]
        result["physical"] = {
            "rows_per_chunk": args.physical,
            "step_time_ratio_vs_ghost_bk": round(chunked["step_s_median"] / whole["step_s_median"], 3),
            "step_peak_memory_ratio_vs_ghost_bk": round(
                chunked["step_peak_over_before_mib"] / max(whole["step_peak_over_before_mib"], 1e-9), 3),
            "same_loss": abs(chunked["last_loss"] - whole["last_loss"]) < 1e-3,
        }
        print(json.dumps(result["physical"]))
    print(json.dumps(result["goal"]))
    write_result(args.name, result)


if __name__ == "__main__":
    main()
