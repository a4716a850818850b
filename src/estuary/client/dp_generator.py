"""A DP generator on the client: DP fine-tune an SLM on label-prefixed private examples, then sample
labelled synthetic examples from it (post-processing of a DP model stays DP).

Training text of an example with label y: the control prefix `Label: <label name>\\nText:` followed by
` <text>\\n`; only the text after the prefix is learnt. Sampling prompts the same prefix for each label
and keeps the text up to the first newline. Filtering (empty, too short/long, malformed: the prefix
markers reappear) and deduplication look at the synthetic samples only, never at private data, so the
released set keeps the generator's (ε, δ). FDKT and DistilDP build on `train_dp_generator` and
`sample_synthetic`; `estuary.client.dp_ops.client_dp_synthesize` runs both inside a client task.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from estuary.data.samples import GENERATOR_MARKERS, sample_text
from estuary.data.task import Example, Task
from estuary.lm.encoding import model_device
from estuary.lm.model import adapter_state
from estuary.lm.seeding import rng_scope

if TYPE_CHECKING:
    from estuary.config import PrivacyConfig
    from estuary.privacy.dp_sgd import DPTrainResult

CONTROL = "Label: {text}\nText:"
SUBJECT = "Write {subject}.\n"
_MARKERS = GENERATOR_MARKERS
UNLABELLED = "text"


@dataclass(frozen=True)
class GeneratorConfig:
    """DP generator training, sampling, filtering and deduplication settings (a method config embeds it)."""

    epochs: float = field(default=2.0, metadata={"help": "DP fine-tuning epochs of the generator (Poisson)."})
    batch_size: int = field(default=8, metadata={"help": "Expected Poisson batch size of generator training."})
    lr: float = field(default=1e-3, metadata={"help": "Generator learning rate (AdamW)."})
    max_length: int = field(default=96, metadata={"help": "Tokens per training example (prefix + text)."})
    samples_per_label: int = field(default=16, metadata={"help": "Synthetic examples wanted per label."})
    oversample: float = field(default=3.0, metadata={"help": "Draw at most this many times the wanted count."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens sampled per synthetic example."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    min_words: int = field(default=3, metadata={"help": "Drop samples with fewer words."})
    max_words: int | None = field(default=None, metadata={"help": "Drop samples with more words (None: no cap)."})
    dedup: Literal["none", "exact", "normalized"] = field(
        default="normalized", metadata={"help": "Drop duplicates: exact text, or case/space/punctuation-folded."}
    )
    sample_batch: int = field(default=16, metadata={"help": "Sequences generated per forward batch."})


@dataclass
class SyntheticBatch:
    examples: list[Example]
    stats: dict[str, int]  # generated = kept + empty + short + long + malformed + duplicate + surplus


def control_template(task: Task) -> str:
    """The generator's prompt template over the label control `{text}`: the task's subject line, if it has
    one (public, data-independent), then `Label: {text}\nText:`, then the task's public `prefix` every text
    starts with, if it has one (E2E's `name[`: the sample is written from inside the format)."""
    subject = task.extra.get("subject")
    prefix = task.extra.get("prefix")
    return (SUBJECT.format(subject=subject) if subject else "") + CONTROL + (f" {prefix}" if prefix else "")


def generator_task(task: Task) -> Task:
    """The generation task a DP generator for `task` is trained on (label as control prefix)."""
    return Task(name=f"{task.name}/generator", kind="generation", template=control_template(task),
                description=f"label-conditioned generator for {task.name}")


def label_controls(task: Task) -> list[str]:
    """The control word of each label (its name, else its label word), or one control if unlabelled."""
    if task.kind == "classification" and task.num_labels:
        names = task.label_names or tuple(w.strip() for w in task.label_words)
        return [str(n) for n in names]
    return [UNLABELLED]


def generator_examples(task: Task, examples: Sequence[Example]) -> list[Example]:
    """Private examples → generator training examples: `Label: y\\nText:` → ` text\\n` (an example with a
    target as one line, `estuary.data.samples.sample_text`)."""
    controls = label_controls(task)
    out = []
    for ex in examples:
        if ex.text_pair is not None and ex.target is None:
            raise ValueError(f"task {task.name!r}: the DP generator handles single-text examples only (no text_pair)")
        control = controls[ex.label] if ex.label is not None and len(controls) > 1 else controls[0]
        text = sample_text(task, ex)
        prefix = task.extra.get("prefix")
        if prefix and text.startswith(prefix):  # the prompt ends with the prefix: learn what follows it
            out.append(Example(text=control, target=text[len(prefix):] + "\n", uid=ex.uid))
        else:
            out.append(Example(text=control, target=" " + text + "\n", uid=ex.uid))
    return out


def fresh_adapter_state(model: Any, seed: int) -> dict[str, torch.Tensor]:
    """A data-independent LoRA initialisation (A: PEFT's Kaiming-uniform, B: zero) seeded by `seed`.

    A DP generator must start from weights that never saw private data, so it is not started from the
    client's (possibly non-privately trained) adapter.
    """
    current = adapter_state(model)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in current.items():
        if "lora_A" in key:
            bound = 1.0 / math.sqrt(value.shape[1])  # kaiming_uniform_(a=sqrt(5)) on [r, in]
            out[key] = (torch.rand(value.shape, generator=gen, dtype=torch.float32) * 2 - 1).mul(bound).to(value.dtype)
        elif "lora_B" in key:
            out[key] = torch.zeros_like(value)
        else:
            raise ValueError(f"adapter weight {key!r} is not LoRA A/B; cannot build a fresh generator adapter")
    return out


def train_dp_generator(
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    ledger: dict[str, Any],
    dp_cfg: PrivacyConfig,
    gen_cfg: GeneratorConfig,
    seed: int,
    optimizer_state: dict[str, Any] | None = None,
    steps: int | None = None,
) -> DPTrainResult:
    """DP fine-tune `model`'s adapter as a label-conditioned generator on `examples` (ledger charged)."""
    from estuary.privacy.dp_sgd import dp_train_steps

    return dp_train_steps(
        model, tokenizer, generator_task(task), generator_examples(task, examples),
        ledger=ledger, dp_cfg=dp_cfg, steps=steps, epochs=None if steps is not None else gen_cfg.epochs,
        batch_size=gen_cfg.batch_size, lr=gen_cfg.lr, max_length=gen_cfg.max_length, seed=seed,
        optimizer_state=optimizer_state, purpose="generator",
    )


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def _stop_ids(tokenizer: Any) -> list[int]:
    ids = [tokenizer.eos_token_id] if isinstance(tokenizer.eos_token_id, int) else []
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) == 1:
        ids.append(int(newline[0]))
    return ids


def sample_synthetic(
    model: Any,
    tokenizer: Any,
    task: Task,
    gen_cfg: GeneratorConfig,
    *,
    seed: int,
    uid_prefix: str = "synthetic",
) -> SyntheticBatch:
    """Sample `samples_per_label` filtered, deduplicated labelled examples per label from a generator."""
    controls = label_controls(task)
    labelled = len(controls) > 1
    prefix = task.extra.get("prefix", "")
    device = model_device(model)
    stop = _stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else (stop[0] if stop else 0)
    stats = dict.fromkeys(("generated", "kept", "empty", "short", "long", "malformed", "duplicate", "surplus"), 0)
    seen: set[str] = set()
    out: list[Example] = []
    was_training = model.training
    model.eval()
    try:
        for label, control in enumerate(controls):
            prompt = tokenizer(control_template(task).format(text=control), add_special_tokens=True)["input_ids"]
            budget = max(gen_cfg.samples_per_label, math.ceil(gen_cfg.samples_per_label * gen_cfg.oversample))
            kept = drawn = 0
            while kept < gen_cfg.samples_per_label and drawn < budget:
                k = min(gen_cfg.sample_batch, budget - drawn)
                ids = torch.tensor([prompt] * k, dtype=torch.long, device=device)
                with rng_scope(seed + 7919 * label + drawn, device), torch.inference_mode():
                    gen = model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                        temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, max_new_tokens=gen_cfg.max_new_tokens,
                        eos_token_id=stop or None, pad_token_id=pad,
                    )
                drawn += k
                for row in gen[:, len(prompt):].tolist():
                    stats["generated"] += 1
                    text = tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip()
                    if text and prefix:
                        text = prefix + text
                    reason = _reject(text, gen_cfg, seen)
                    if reason:
                        stats[reason] += 1
                        continue
                    if kept >= gen_cfg.samples_per_label:
                        stats["surplus"] += 1  # valid, but this label has enough
                        continue
                    out.append(Example(text=text, label=label if labelled else None,
                                       uid=f"{uid_prefix}/{label}/{kept}"))
                    kept += 1
                    stats["kept"] += 1
    finally:
        model.train(was_training)
    return SyntheticBatch(out, stats)


def _reject(text: str, cfg: GeneratorConfig, seen: set[str]) -> str:
    """Why a sample is dropped ("" = keep); records kept samples in `seen` for deduplication."""
    if not text:
        return "empty"
    if any(m in text for m in _MARKERS):
        return "malformed"
    words = len(text.split())
    if words < cfg.min_words:
        return "short"
    if cfg.max_words is not None and words > cfg.max_words:
        return "long"
    if cfg.dedup != "none":
        key = text if cfg.dedup == "exact" else _normalize(text)
        if key in seen:
            return "duplicate"
        seen.add(key)
    return ""
