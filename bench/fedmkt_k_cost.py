"""What FedMKT's k costs on CPU: the published k = 128 against the CPU jobs' 16, for one round's knowledge.

    python -m bench.fedmkt_k_cost [--job fedmkt-sst2] [--ks 16 128]

On the job's public texts (256 SST-2 validation sentences in fedmkt-sst2), in this process: the served LLM's
top-k through Estuary's vLLM engine (no Serve; `server.max_logprobs` raised to the largest k), one client's
top-k from its SLM (transformers, the job's first client model), the payloads' sizes as they cross the wire
(pickled dicts), and the driver's alignment and selection both ways (`mutual_exchange`). vLLM's
`max_logprobs` is only a request cap (its SamplingParams check k against it), so one engine serves every k.
Writes bench/results/fedmkt_k_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

from bench.common import write_result
from estuary.platform.loading import load_config

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


def measure(job: str, ks: list[int]) -> dict[str, Any]:
    from estuary.client.knowledge_transfer import public_sequences, topk_knowledge
    from estuary.data import get_task
    from estuary.lm.model import load_base
    from estuary.models import resolve_model
    from estuary.registry import build_params, get
    from estuary.serve.types import TopKLogprobs
    from estuary.serve.vllm_engine import VLLMEngine
    from estuary.strategies.fedmkt_knowledge import TokenizerBank, mutual_exchange

    cfg = load_config(JOBS / f"{job}.yaml", [f"server.max_logprobs={max(ks)}"])
    task = get_task(cfg.data.task)
    public = get("fedmkt")(cfg, build_params("fedmkt", cfg.method_params)).public()
    texts = [task.prompt(ex) + task.completion(ex) for ex in public]
    server = cfg.server_config().model_copy(update={"enable_lora": False})
    engine = VLLMEngine(server, resolve_model(server.model))
    loop = asyncio.new_event_loop()
    _, start_s = _timed(lambda: loop.run_until_complete(engine.start()))
    ids = engine.encode_all(texts)
    client_spec = cfg.models.for_client(0)
    model, tok = load_base(resolve_model(client_spec), dtype=cfg.models.dtype)
    seqs = public_sequences(tok, task, public, cfg.training.max_length)
    bank = TokenizerBank()
    for pair in ((client_spec, server.model), (server.model, client_spec)):  # the MinED mappings, once
        bank.mapping(*pair)
    loop.run_until_complete(engine.topk(ids[:8], ks[0], None))  # warm-up
    rows: list[dict[str, Any]] = []
    for k in ks:
        items, llm_s = _timed(lambda k=k: loop.run_until_complete(engine.topk(ids, k, None)))
        llm = TopKLogprobs(model=server.model, adapter=None, k=k, engine="vllm", dtype=server.dtype, texts=items)
        c_items, client_s = _timed(lambda k=k: topk_knowledge(model, tok, seqs, texts, k=k, batch_size=16))
        client = TopKLogprobs(model=client_spec, adapter=None, k=k, engine="transformers", dtype=cfg.models.dtype,
                              texts=c_items)
        _, align_s = _timed(lambda llm=llm, client=client: mutual_exchange(
            server.model, llm, {"c000": (client_spec, client)}, bank))
        rows.append({"k": k, "llm_topk_s": llm_s, "client_topk_s": client_s, "exchange_s": align_s,
                     "llm_payload_mib": round(len(pickle.dumps(llm.to_dict())) / 2**20, 2),
                     "client_payload_mib": round(len(pickle.dumps(client.to_dict())) / 2**20, 2),
                     "positions": sum(len(t.token_ids) for t in items)})
        print(rows[-1])
    loop.run_until_complete(engine.shutdown())
    return {"job": job, "texts": len(texts), "engine_start_s": start_s, "llm": server.model,
            "client": client_spec, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="fedmkt-sst2")
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 128])
    args = ap.parse_args()
    write_result("fedmkt_k_cost", measure(args.job, args.ks))


if __name__ == "__main__":
    main()
