"""The function every Ray Train worker runs: DeepSpeed over a LoRA-adapted server LLM, on its data shard.

Each worker loads the base model, attaches a LoRA adapter (same seed on every rank, so the ranks start
equal), wraps it in a DeepSpeed engine (ZeRO stage from the job) on the process group Ray Train created
(gloo on CPU, NCCL on GPU), restores the last checkpoint if there is one, and runs the job's optimizer
steps on micro-batches of its own shard (`ray.train.get_dataset_shard("train")`), cycling through the
shard as often as needed. Dropout masks come from (seed, rank, step, micro-batch), so a seed fixes the
run, recovered and resumed jobs included. Every `checkpoint_every` steps (and at the end) all ranks save
their part of a checkpoint and report it together with the mean losses of the steps since the last report.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from estuary.errors import DataError
from estuary.lm.objective import objective
from estuary.lm.seeding import mix_seed, rng_scope
from estuary.train import ds_checkpoint
from estuary.train.ds_checkpoint import TrainerState
from estuary.train.knowledge import collate
from estuary.train.train_config import TrainConfig


def micro_batches(shard: Any, size: int, skip: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Micro-batches of rows of a worker's shard, epoch after epoch; the first `skip` ones are passed over."""
    seen = 0
    while True:
        rows_in_epoch = 0
        for batch in shard.iter_batches(batch_size=size, batch_format="pyarrow", drop_last=False):
            rows = batch.to_pylist()
            rows_in_epoch += len(rows)
            if seen < skip:
                seen += 1
                continue
            yield rows
        if rows_in_epoch == 0:
            raise DataError("a training worker's shard of the knowledge is empty")


def load_model(cfg: TrainConfig, model_path: str) -> tuple[Any, Any, int]:
    """The base model with the job's LoRA adapter (`init_adapter`'s weights, else fresh and seeded), its
    tokenizer, and its vocabulary size."""
    from estuary.lm.model import attach_lora, load_base

    model, tokenizer = load_base(model_path, dtype=cfg.dtype, bf16_matmul=cfg.bf16_matmul)
    vocab = int(cast(torch.nn.Embedding, model.get_input_embeddings()).weight.shape[0])
    if cfg.init_adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True), tokenizer, vocab
    return attach_lora(model, cfg.lora, seed=cfg.seed), tokenizer, vocab


def _mean_across_ranks(values: list[list[float]], tokens: int, device: Any) -> tuple[list[list[float]], int]:
    """Per-step [loss, sft, kd] rows averaged over ranks, and the tokens summed over ranks."""
    import torch.distributed as dist

    flat = torch.tensor([x for row in values for x in row] + [float(tokens)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flat)
        world = dist.get_world_size()
    else:
        world = 1
    out = flat.cpu().tolist()
    rows = [[x / world for x in out[i:i + 3]] for i in range(0, len(out) - 1, 3)]
    return rows, round(out[-1])


def _to(tensor: torch.Tensor | None, device: Any) -> Any:
    return None if tensor is None else tensor.to(device)


def train_loop(config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of the server training job (config: train, model_path, drill_marker, resume_from)."""
    started = time.time()
    import ray.train

    cfg = TrainConfig.model_validate(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.on_gpu:
        torch.set_num_threads(cfg.resources.threads())
    from estuary.train import zero

    zero.prepare(cfg.on_gpu, cfg.cpu_shm_comm)
    model, tokenizer, vocab = load_model(cfg, config["model_path"])
    engine = zero.initialize(model, zero.deepspeed_config(cfg))
    engine.train()

    state = TrainerState(world_size=world, zero_stage=cfg.zero.stage)
    restored = ray.train.get_checkpoint()  # this job's last checkpoint (a recovered worker group)
    if restored is None and config.get("resume_from"):
        restored = ray.train.Checkpoint.from_directory(config["resume_from"])  # a new job continuing an old one
    if restored is not None:
        with restored.as_directory() as folder:
            state = ds_checkpoint.load(engine, Path(folder))
        state.attempts += 1
        state.resumed_from = state.step

    drill = Path(config["drill_marker"]) if config.get("drill_marker") else None
    batches = micro_batches(ray.train.get_dataset_shard("train"), cfg.micro_batch_size,
                            skip=state.step * cfg.grad_accum)
    pending: list[list[float]] = []  # [loss, sft, kd] of the steps since the last report (this rank)
    pending_tokens = 0
    state.worker_started_at, state.first_step_at = started, time.time()
    obj = cfg.objective
    for step in range(state.step + 1, cfg.steps + 1):
        if drill is not None and step == cfg.fault_drill_step and rank == world - 1 and not drill.exists():
            drill.parent.mkdir(parents=True, exist_ok=True)
            drill.write_text(f"raised at step {step}\n")
            raise RuntimeError(f"fault drill: worker {rank} fails at step {step} (train.fault_drill_step)")
        began = time.perf_counter()
        sums = [0.0, 0.0, 0.0]
        for micro in range(cfg.grad_accum):
            batch = collate(next(batches), tokenizer, cfg.max_length, vocab)
            dev = engine.device
            # Dropout masks from (seed, rank, step, micro-batch): a seed fixes the run, resumed runs included.
            with rng_scope(mix_seed(cfg.seed, rank, step, micro, 5), dev):
                logits = engine(input_ids=batch["input_ids"].to(dev),
                                attention_mask=batch["attention_mask"].to(dev)).logits
                parts = objective(logits, _to(batch["labels"], dev), _to(batch["topk_ids"], dev),
                                  _to(batch["topk_logprobs"], dev),
                                  distill_weight=obj.distill_weight, temperature=obj.temperature,
                                  tail_bucket=obj.tail_bucket)
                engine.backward(parts.loss)
            engine.step()  # DeepSpeed applies the optimizer at gradient-accumulation boundaries
            sums = [sums[0] + float(parts.loss.detach()), sums[1] + float(parts.sft.detach()),
                    sums[2] + float(parts.kd.detach())]
            pending_tokens += batch["tokens"]
        pending.append([s / cfg.grad_accum for s in sums])
        state.train_seconds += time.perf_counter() - began
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            rows, tokens = _mean_across_ranks(pending, pending_tokens, engine.device)
            state.losses += [r[0] for r in rows]
            state.sft += [r[1] for r in rows]
            state.kd += [r[2] for r in rows]
            state.tokens += tokens
            state.step = step
            pending, pending_tokens = [], 0
            with tempfile.TemporaryDirectory(prefix="estuary-train-") as tmp:
                ds_checkpoint.save(engine, Path(tmp), state, rank)
                metrics = {"step": step, "loss": state.losses[-1], "tokens": state.tokens}
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
