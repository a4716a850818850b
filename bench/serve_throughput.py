"""Generation throughput of the served vLLM against the transformers reference, measured in one run.

    python -m bench.serve_throughput [--models smollm2-135m qwen2.5-0.5b qwen2.5-coder-1.5b]
                                     [--batches 1 16 64] [--new-tokens 64] [--prompts 256] [--shots 16]
                                     [--no-lora-point] [--no-cli-start] [--server-dtypes auto ...]
                                     [--topk-texts 0] [--no-reference] [--name serve_throughput]

For each model (defaults: the default client and server models, and qwen2.5-coder-1.5b, the method jobs'
server):
1. `estuary serve --model M` as a user starts it (its own local Ray cluster): seconds from launching the
   command to the first token answered over HTTP (`/v1/completions`, 1 token).
2. The server LLM deployed on a local 2-CPU Ray cluster (Ray Serve + vLLM, default `ServerConfig`: LoRA
   on, prefix caching on, dtype auto), called through its DeploymentHandle, one call per batch: output
   tokens/s at each batch size (greedy, EOS ignored, distinct SST-2 prompts) and on the augmentation
   workload — `--prompts` prompts built by FDKT's own builder (`estuary.knowledge.prompts`), which share a
   header and `--shots - 1` demonstrations per label, sampled (T=0.9, top-p 0.95). Also the time from
   `start_server` to the first token and the replica's peak RSS. For SmolLM2, batch 64 with LoRA off too.
   With `--topk-texts N`, the prompt-side workload FedMKT and CrossLM send: top-k log-probabilities (k = 5)
   of N SST-2 training texts, in tokens scored per second. With several `--server-dtypes` (e.g. float32
   bfloat16), the served model is measured at each, one after the other in the same run, with each one's
   ratios over the first.
3. The transformers reference engine (`generate`, padded batches) in a fresh process, at its faster dtype
   (bfloat16 vs float32, picked at batch 16), on the same prompts; its peak RSS.
Ratios are vLLM / reference (`--no-reference` skips 3). Results: bench/results/<--name>.json (default
serve_throughput.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import ray

from bench.common import write_result
from estuary.data import load_splits
from estuary.serve.config import ServerConfig
from estuary.serve.launcher import start_server, stop_server
from estuary.serve.types import GenerationParams

GREEDY_IGNORE_EOS: dict[str, Any] = dict(temperature=0.0, ignore_eos=True)


def short_prompts(n: int) -> list[str]:
    texts = [ex.text for ex in load_splits("sst2", seed=0).train[: max(n, 64)]]
    return [f"Review: {t}\nSentiment:" for t in texts[:n]]


def augmentation_prompts(n: int, shots: int, seed: int = 0) -> list[str]:
    """FDKT's augmentation prompts: per label, a shared header + `shots - 1` demonstrations, then one more."""
    from estuary.knowledge.prompts import augmentation_prompts as fdkt_prompts

    splits = load_splits("sst2", seed=seed)
    labels = splits.task.num_labels
    return [p for label in range(labels)
            for p in fdkt_prompts(splits.task, splits.train, label, n // labels, shots, seed)]


def sampled(new_tokens: int) -> GenerationParams:
    return GenerationParams(max_tokens=new_tokens, temperature=0.9, top_p=0.95, seed=0, ignore_eos=True)


def tokens_per_s(completions: list[Any], seconds: float) -> float:
    return round(sum(c.output_tokens for c in completions) / seconds, 1)


# -- 1. `estuary serve` from the command line ----------------------------------------------------------
def cli_first_token(model: str, timeout_s: float = 900) -> dict[str, Any]:
    """Launch `estuary serve --model M` and poll HTTP until one token comes back; then Ctrl-C it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "serve.log"
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}).encode()
    began = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "estuary", "serve", "--model", model, "--port", str(port),
                                 "--set", f"adapter_root={log.parent / 'adapters'}"], stdout=out, stderr=out)
    first = None
    try:
        while time.monotonic() - began < timeout_s and proc.poll() is None:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    if json.loads(resp.read())["choices"]:
                        first = time.monotonic() - began
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    if first is None:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"no token within {timeout_s:.0f} s (exit {proc.returncode}): {tail[0][:300]}"}
    print(f"  `estuary serve --model {model}`: first token over HTTP after {first:.1f} s", flush=True)
    return {"first_token_s": round(first, 1), "exit_code_after_ctrl_c": proc.returncode}


# -- 2. the served vLLM ------------------------------------------------------------------------------------
def run_served(model: str, batches: list[int], new_tokens: int, workload: list[str], *,
               enable_lora: bool = True, only_batch: int | None = None, dtype: str = "auto",
               topk_texts: int = 0) -> dict[str, Any]:
    cfg = ServerConfig(model=model, app_name=f"bench-{model.replace('.', '-')}", enable_lora=enable_lora,
                       kv_cache_gib=2, max_model_len=2048, adapter_root=tempfile.mkdtemp(prefix="bench-adapters-"),
                       dtype=dtype)
    began = time.monotonic()
    server = start_server(cfg)
    ready_s = time.monotonic() - began
    server.generate(["Hello"], GenerationParams(max_tokens=1, temperature=0.0))
    first_token_s = time.monotonic() - began
    info = server.info()
    out: dict[str, Any] = {
        "config": {"enable_lora": enable_lora, "dtype": info["dtype"], "prefix_caching": cfg.enable_prefix_caching,
                   "in_process_engine": cfg.engine_in_process(), "cpu_threads": info["cpu_threads"]},
        "deploy_ready_s": round(ready_s, 1), "first_token_s": round(first_token_s, 1),
    }
    params = GenerationParams(max_tokens=new_tokens, **GREEDY_IGNORE_EOS)
    server.generate(short_prompts(4), params)  # warm-up
    for b in [only_batch] if only_batch else batches:
        t = time.perf_counter()
        done = server.generate(short_prompts(b), params)
        out[f"batch_{b}"] = tokens_per_s(done, time.perf_counter() - t)
        print(f"  served {model} lora={enable_lora} batch {b}: {out[f'batch_{b}']} tok/s", flush=True)
    if workload and not only_batch:
        t = time.perf_counter()
        done = server.generate(workload, sampled(new_tokens), progress=False)
        out["augmentation"] = tokens_per_s(done, time.perf_counter() - t)
        out["augmentation_prompt_tokens_mean"] = round(sum(c.prompt_tokens for c in done) / len(done), 1)
        print(f"  served {model} augmentation ({len(workload)} prompts): {out['augmentation']} tok/s", flush=True)
    if topk_texts and not only_batch:
        texts = [ex.text for ex in load_splits("sst2", seed=0).train[:topk_texts]]
        t = time.perf_counter()
        scored = server.topk_logprobs(texts, k=5).texts
        out["topk_scored_tok_s"] = round(sum(len(item.token_ids) for item in scored) / (time.perf_counter() - t), 1)
        print(f"  served {model} top-5 of {len(texts)} texts: {out['topk_scored_tok_s']} tok/s", flush=True)
    out["replica_peak_rss_mib"] = server.info()["peak_rss_mib"]
    stop_server(cfg.app_name)
    return out


# -- 3. the transformers reference (runs in a fresh process: its own peak memory) ---------------------------
def run_reference(model: str, batches: list[int], new_tokens: int, workload: list[str]) -> dict[str, Any]:
    from estuary.models import resolve_model
    from estuary.serve.reference import ReferenceEngine

    path = resolve_model(model)
    params = GenerationParams(max_tokens=new_tokens, **GREEDY_IGNORE_EOS)

    def engine(dtype: str) -> ReferenceEngine:
        e = ReferenceEngine(ServerConfig(model=model, engine="reference", dtype=dtype), path)  # type: ignore[arg-type]
        asyncio.run(e.start())
        return e

    def measure(e: ReferenceEngine, prompts: list[str], p: GenerationParams, batch: int) -> float:
        async def collect() -> list[Any]:
            return [c async for c in e.stream(e.encode_all(prompts), p, None)]

        e.config = e.config.model_copy(update={"reference_batch_size": batch})
        t = time.perf_counter()
        done = asyncio.run(collect())
        return tokens_per_s(done, time.perf_counter() - t)

    probe = {}
    for dtype in ("bfloat16", "float32"):  # "its faster dtype", picked at batch 16
        e = engine(dtype)
        measure(e, short_prompts(2), GenerationParams(max_tokens=4, **GREEDY_IGNORE_EOS), 2)  # warm-up
        probe[dtype] = measure(e, short_prompts(16), params, 16)
        print(f"  reference {model} {dtype} batch 16: {probe[dtype]} tok/s", flush=True)
        del e
    best = max(probe, key=lambda d: probe[d])
    out: dict[str, Any] = {"dtype": best, "dtype_probe_batch_16": probe}
    e = engine(best)
    out["cpu_threads"] = e.threads
    for b in batches:
        out[f"batch_{b}"] = probe[best] if b == 16 else measure(e, short_prompts(b), params, b)
        print(f"  reference {model} batch {b}: {out[f'batch_{b}']} tok/s", flush=True)
    if workload:
        best_batch = max((b for b in batches if b > 1), key=lambda b: out[f"batch_{b}"], default=1)
        out["augmentation"] = measure(e, workload, sampled(new_tokens), best_batch)
        out["augmentation_batch"] = best_batch
        print(f"  reference {model} augmentation: {out['augmentation']} tok/s (batch {best_batch})", flush=True)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def dtype_ratios(by_dtype: dict[str, dict[str, Any]], first: str) -> dict[str, dict[str, float]]:
    """Each later served dtype's tokens/s over the first's, per measured workload."""
    base = by_dtype[first]
    keys = [k for k, v in base.items() if (k.startswith("batch_") or k in ("augmentation", "topk_scored_tok_s"))
            and isinstance(v, int | float)]
    return {d: {k: round(m[k] / base[k], 2) for k in keys if base[k]} for d, m in by_dtype.items() if d != first}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=256, help="augmentation workload size (0 skips it)")
    ap.add_argument("--shots", type=int, default=16, help="demonstrations per augmentation prompt")
    ap.add_argument("--no-lora-point", action="store_true", help="skip the LoRA-off batch-64 point")
    ap.add_argument("--no-cli-start", action="store_true", help="skip timing `estuary serve` to its first token")
    ap.add_argument("--server-dtypes", nargs="+", default=["auto"],
                    help="served dtypes to measure in turn (server.dtype values); ratios are over the first")
    ap.add_argument("--topk-texts", type=int, default=0, help="also time top-5 log-probabilities of N texts")
    ap.add_argument("--no-reference", action="store_true", help="skip the transformers reference engine")
    ap.add_argument("--name", default="serve_throughput", help="result file name under bench/results/")
    args = ap.parse_args()

    load_before = os.getloadavg()
    workload = augmentation_prompts(args.prompts, args.shots) if args.prompts else []
    results: dict[str, Any] = {m: {} for m in args.models}
    if not args.no_cli_start:  # before this process starts its own cluster: the command starts one too
        for model in args.models:
            results[model]["estuary_serve"] = cli_first_token(model)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="bench-ray-", dir="/tmp"),
             logging_level="WARNING", log_to_driver=bool(os.environ.get("BENCH_LOGS")))
    for model in args.models:
        print(f"{model} (served):", flush=True)
        by_dtype = {d: run_served(model, args.batches, args.new_tokens, workload, dtype=d,
                                  topk_texts=args.topk_texts) for d in args.server_dtypes}
        served = by_dtype[args.server_dtypes[0]]
        if model == "smollm2-135m" and not args.no_lora_point:
            served["lora_off"] = run_served(model, args.batches, args.new_tokens, [], enable_lora=False,
                                            only_batch=max(args.batches))
        results[model]["served_vllm_tok_s"] = served
        if len(by_dtype) > 1:
            # the first dtype's figures are served_vllm_tok_s; each later one's are kept once, here
            results[model]["served_other_dtypes"] = {d: m for d, m in by_dtype.items() if d != args.server_dtypes[0]}
            results[model]["ratio_over_first_dtype"] = dtype_ratios(by_dtype, args.server_dtypes[0])
            print(f"  over {args.server_dtypes[0]}: {results[model]['ratio_over_first_dtype']}", flush=True)
    ray.shutdown()
    spawn = multiprocessing.get_context("spawn")
    for model in [] if args.no_reference else args.models:
        print(f"{model} (reference):", flush=True)
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            reference = pool.submit(run_reference, model, args.batches, args.new_tokens, workload).result()
        served = results[model]["served_vllm_tok_s"]
        keys = [f"batch_{b}" for b in args.batches] + (["augmentation"] if workload else [])
        results[model]["reference_transformers_tok_s"] = reference
        results[model]["ratio_vllm_over_reference"] = {k: round(served[k] / reference[k], 2) for k in keys}
        print(f"  ratios: {results[model]['ratio_vllm_over_reference']}", flush=True)
    write_result(args.name, {
        "what": "output tokens/s, served vLLM (Ray Serve handle)" + (
            "" if args.no_reference else " vs transformers reference generate, same run") + (
            f"; served dtypes {', '.join(args.server_dtypes)} in turn" if len(args.server_dtypes) > 1 else ""),
        "command": " ".join(["python -m bench.serve_throughput", *sys.argv[1:]]),
        "new_tokens": args.new_tokens, "batches": args.batches, "augmentation_prompts": len(workload),
        "augmentation_shots": args.shots,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "memory_available_gib": round(psutil.virtual_memory().available / 2**30, 1),
        "results": results,
    })


if __name__ == "__main__":
    main()
