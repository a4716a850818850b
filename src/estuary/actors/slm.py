"""Client small LMs: base model + LoRA, adapter/optimizer state swaps, training steps, evaluation.

Pure torch/transformers/peft (no Ray): Ray worker actors call these functions. A worker loads one
base model, attaches one LoRA adapter, and serves many clients by swapping adapter weights
(`adapter_state` / `load_adapter_state`) and optimizer state (`TrainResult.optimizer_state`).
Nothing here keeps module-level state, and the caller's global RNG is left untouched (seeded work
runs inside `torch.random.fork_rng`).

Encoding and scoring live in `estuary.actors.evaluation` and are re-exported here:
`encode`, `evaluate`, `predict_label_probs`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from estuary.actors.evaluation import (
    Encoded,
    _pad_id,
    completion_token_logprobs,
    encode,
    evaluate,
    label_scores,
    model_device,
    predict_label_probs,
)
from estuary.data.task import Example, Task

__all__ = [
    "LoraSpec",
    "TrainResult",
    "adapter_state",
    "attach_lora",
    "encode",
    "evaluate",
    "label_scores",
    "load_adapter_state",
    "load_base",
    "predict_label_probs",
    "train_steps",
    "trainable_parameters",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass
class TrainResult:
    losses: list[float]  # mean completion-token cross-entropy of each step's batch
    optimizer_state: dict[str, Any]  # pass back as `optimizer_state=` to continue (any worker, any device)
    examples_seen: int  # steps * batch_size (sampled, so repeats count)
    tokens: int  # non-padding tokens fed through the model
    seconds: float  # wall time of the whole call


# ------------------------------------------------------------------------------ model construction


def load_base(
    model_path: str, *, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local HF folder, in eval mode.

    The tokenizer's pad token falls back to EOS; its padding side is set to "right" (this module
    pads by itself, right-aligned, and never relies on it).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES[dtype])
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def attach_lora(model: PreTrainedModel, spec: LoraSpec, *, seed: int) -> PeftModel:
    """Wrap `model` (modified in place) with a fresh LoRA adapter; only adapter weights train.

    The adapter's initial weights depend only on `seed` (lora_A is random, lora_B zero, so the
    adapted model starts equal to the base model).
    """
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type=TaskType.CAUSAL_LM,
        bias="none",
    )
    with _rng_scope(seed, model_device(model)):
        peft_model = get_peft_model(model, config)
    peft_model.eval()
    return peft_model


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable parameters, in registration order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's weights (keys without the adapter name), detached CPU clones."""
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: v.detach().to("cpu").clone() for k, v in state.items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Replace the adapter's weights with `state` (from `adapter_state`), all of them.

    Raises ValueError if `state` misses any adapter weight or has extra keys, so a swap can never
    leave part of the previous client's adapter in place.
    """
    expected = set(get_peft_model_state_dict(model, save_embedding_layers=False))
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise ValueError(
            f"adapter state does not match the model's adapter: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:2]}), {len(extra)} unexpected (e.g. {sorted(extra)[:2]})"
        )
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter keys not loaded: {unexpected[:3]}")


# ---------------------------------------------------------------------------------------- training


@contextmanager
def _rng_scope(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNGs for a block and restore the caller's RNG state after it."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers (stable across processes, unlike hash())."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of global step `step`.

    The stream of examples is a sequence of epochs, each a fresh permutation of range(n) drawn
    from a torch.Generator seeded by (seed, epoch): within an epoch no example repeats, across
    epochs examples are re-drawn (sampling with replacement between epochs). A batch depends only
    on (seed, step), so training resumed at step k sees the same batches as uninterrupted training.
    """
    out: list[int] = []
    first = step * batch_size
    epoch_cache: dict[int, list[int]] = {}
    for g in range(first, first + batch_size):
        epoch, offset = divmod(g, n)
        if epoch not in epoch_cache:
            gen = torch.Generator().manual_seed(_mix(seed, epoch, 1))
            epoch_cache[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(epoch_cache[epoch][offset])
    return out


def _export_optimizer(optimizer: torch.optim.Optimizer, names: list[str], step: int) -> dict[str, Any]:
    raw = optimizer.state_dict()
    state = {
        idx: {k: (v.detach().to("cpu").clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for idx, s in raw["state"].items()
    }
    groups = [dict(g) for g in raw["param_groups"]]
    return {"state": state, "param_groups": groups, "param_names": list(names), "step": step}


def _import_optimizer(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], names: list[str], params: Sequence[torch.Tensor]
) -> int:
    same_shapes = all(
        not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape == params[int(i)].shape
        for i, s in saved["state"].items()
        for v in s.values()
    )
    if list(saved.get("param_names", [])) != names or not same_shapes:
        raise ValueError("optimizer_state was saved for different trainable parameters (LoRA spec or model differ)")
    optimizer.load_state_dict({"state": saved["state"], "param_groups": saved["param_groups"]})
    return int(saved.get("step", 0))


def adamw(
    named: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
    optimizer_state: dict[str, Any] | None,
) -> tuple[torch.optim.Optimizer, list[str], list[torch.nn.Parameter], int]:
    """AdamW over the named trainable parameters, resumed from an exported `optimizer_state` (with this
    call's lr and weight decay); returns (optimizer, names, params, the step it resumes at)."""
    names, params = [n for n, _ in named], [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    start_step = 0
    if optimizer_state is not None:
        start_step = _import_optimizer(optimizer, optimizer_state, names, params)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = lr, weight_decay
    return optimizer, names, params, start_step


def train_steps(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    lr_schedule: Literal["constant", "linear"] = "constant",
) -> TrainResult:
    """`steps` AdamW steps on the trainable (adapter) parameters.

    Each step's loss is the mean token cross-entropy over the completion tokens of its batch (label
    word, generation target, or whole text; prompts masked out), right-padded with an attention
    mask. Batches come from `_batch_indices` (epoch-wise permutations seeded by `seed`); dropout is
    seeded per step from (seed, step). `optimizer_state` from a previous result continues training:
    its AdamW moments and its step counter, so 2 + 2 steps with a hand-off equal 4 steps in one go
    (same examples and seed). `lr` and `weight_decay` given here override the saved ones. Same
    inputs, seed and state give identical losses. The model is left in the mode it came in.

    `lr_schedule="linear"` decays the learning rate linearly from `lr` towards 0 over this call's
    steps (restarting at every call, so hand-offs no longer equal one long run); it damps the
    late-training swings of the label bias that constant-lr training with small batches shows.
    """
    if lr_schedule not in ("constant", "linear"):
        raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {lr_schedule!r}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1 (got {steps}, {batch_size})")
    if not examples:
        raise ValueError("train_steps() needs at least one example")
    began = time.perf_counter()
    named = trainable_parameters(model)
    if not named:
        raise ValueError("the model has no trainable parameters (attach_lora first)")
    optimizer, names, params, start_step = adamw(named, lr, weight_decay, optimizer_state)

    device = model_device(model)
    pad_id = _pad_id(tokenizer)
    cache: dict[int, Encoded] = {}
    losses: list[float] = []
    tokens = 0
    was_training = model.training
    model.train()
    try:
        for k in range(start_step, start_step + steps):
            idx = _batch_indices(len(examples), batch_size, k, seed)
            todo = sorted({i for i in idx if i not in cache})
            if todo:
                encoded = encode(tokenizer, task, [examples[i] for i in todo], max_length=max_length)
                cache.update(zip(todo, encoded, strict=True))
            batch = [cache[i] for i in idx]
            tokens += sum(len(ids) for ids, _ in batch)
            if lr_schedule == "linear":
                for group in optimizer.param_groups:
                    group["lr"] = lr * (1.0 - (k - start_step) / steps)
            with _rng_scope(_mix(seed, k, 2), device):
                logprobs, _ = completion_token_logprobs(model, batch, pad_id=pad_id)
                loss = -logprobs.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return TrainResult(
        losses=losses,
        optimizer_state=_export_optimizer(optimizer, names, start_step + steps),
        examples_seen=steps * batch_size,
        tokens=tokens,
        seconds=time.perf_counter() - began,
    )
