"""Task data from the server LLM: judging clusters or their samples, few-shot augmentation (FDKT: all-labels
prompts as the reference, or one-label prompts), label-conditioned generation (CrossLM). Every call goes
through the serving deployment's handle, many prompts at once, so vLLM's continuous batching (and its prefix
cache, for augmentation) does the batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from estuary.data.task import Example, Task
from estuary.knowledge.fdkt_prompts import (
    ELIGIBLE,
    all_labels_prompts,
    eligible_messages,
    parse_eligible,
    parse_labelled_lines,
    plain_prompt,
)
from estuary.knowledge.filtering import Judge, SampleJudge, SampleVerdict
from estuary.knowledge.prompts import (
    augmentation_prompts,
    generation_prompt,
    judge_messages,
    label_name,
    parse_sample,
    parse_verdict,
)

if TYPE_CHECKING:
    from estuary.serve.client import ServerLLM as LLM


@dataclass(frozen=True)
class GenerateConfig:
    """How many texts the server LLM writes, and how it samples them."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # unknown keys in a job are errors

    prompts_per_label: int = field(default=8, metadata={"help": "Prompts per label per round."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Samples drawn per prompt (OpenAI `n`)."})
    shots: int = field(default=4, metadata={"help": "Few-shot demonstrations per augmentation prompt."})
    max_tokens: int = field(default=48, metadata={"help": "New tokens per sample (a sample ends at a newline)."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})


@dataclass(frozen=True)
class AugmentConfig(GenerateConfig):
    """FDKT's augmentation: the all-labels prompts' sizes beside the one-label prompts' (GenerateConfig), and
    the reference's sampling (T = 0.8, top-p 0.9) for both."""

    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (the reference's 0.8)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (the reference's 0.9)."})
    prompts: int = field(
        default=16, metadata={"help": "all_labels prompts per round, each with its own demonstrations and one "
                                      "reply (the reference: 200 in its example, 20,000 in the paper)."})
    shots_per_label: int = field(
        default=1, metadata={"help": "all_labels prompts: demonstrations of every label per prompt (the "
                                     "reference's example config: 1)."})
    samples_per_reply: int = field(
        default=8, metadata={"help": "all_labels prompts: new labelled samples the LLM is asked to write per "
                                     "reply; a reply may run to max_tokens × this many tokens."})


def has_chat_template(llm: Any) -> bool:
    """Whether the served model renders chat messages (the deployment's info; True when it does not say)."""
    info = getattr(llm, "info", None)
    return bool(info().get("chat_template", True)) if callable(info) else True


def _params(cfg: GenerateConfig, seed: int) -> Any:
    from estuary.serve.types import GenerationParams

    return GenerationParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            n=cfg.samples_per_prompt, seed=seed, stop=("\n",))


def llm_judge(llm: LLM, task: Task, *, adapter: str | None = None, mode: str = "classify",
              agreement: float = 0.5, tolerance: int = 0) -> Judge:
    """A `filtering.Judge` backed by the server LLM, all clusters in one call. `classify`: the LLM labels
    every shown text (verbalizer log-likelihood, as `llm_classify`); a cluster passes when at least
    `agreement` of its texts get its label, or one within `tolerance` label positions of it (ordinal labels).
    `ask`: a chat Yes/No question per cluster (greedy, 4 tokens)."""
    from estuary.knowledge.llm_eval import llm_predict
    from estuary.serve.types import GenerationParams

    def classify(clusters: Sequence[tuple[int, list[str]]]) -> list[tuple[bool | None, str]]:
        flat = [Example(text=t, label=label) for label, texts in clusters for t in texts]
        preds = iter(llm_predict(llm, task, flat, adapter=adapter) if flat else [])
        out: list[tuple[bool | None, str]] = []
        for label, texts in clusters:
            got = [next(preds) for _ in texts]
            hits = sum(abs(p - label) <= tolerance for p in got)
            within = f" or within {tolerance}" if tolerance else ""
            out.append((hits / max(1, len(got)) >= agreement,
                        f"{hits}/{len(got)} labelled {label_name(task, label)}{within} by the LLM"))
        return out

    def ask(clusters: Sequence[tuple[int, list[str]]]) -> list[tuple[bool | None, str]]:
        if not clusters:
            return []
        prompts = [judge_messages(task, label, texts) for label, texts in clusters]
        params = GenerationParams(max_tokens=4, temperature=0.0, n=1, seed=0)
        answers = [c.text for c in llm.generate(prompts, params, adapter=adapter)]
        return [(parse_verdict(a), a.strip()) for a in answers]

    if tolerance < 0:
        raise ValueError(f"judge tolerance must be >= 0 label positions (got {tolerance})")
    if mode not in ("classify", "ask"):
        raise ValueError(f"judge mode {mode!r}: use classify or ask")
    if mode == "classify" and task.kind != "classification":
        raise ValueError(f"judge mode classify needs a classification task, not {task.name!r}: use ask")
    return classify if mode == "classify" else ask


def llm_sample_judge(llm: LLM, task: Task, *, adapter: str | None = None, mode: str = "eligible",
                     tolerance: int = 0, max_tokens: int = 64) -> SampleJudge:
    """A `filtering.SampleJudge` backed by the server LLM, all listed groups in one call. `eligible` (the FDKT
    reference): one prompt per group listing its samples with their labels, answered greedily with 'The
    eligible samples: i j ...' (`fdkt_prompts.parse_eligible`); chat messages if the model has a chat
    template, else a plain prompt ending in that phrase. `classify`: the LLM labels every sample (verbalizer
    log-likelihood, as `llm_classify`); a sample is kept when that label is within `tolerance` of its own."""
    from estuary.knowledge.llm_eval import llm_predict
    from estuary.serve.types import GenerationParams

    def classify(groups: Sequence[Sequence[tuple[int, str]]]) -> list[SampleVerdict]:
        flat = [Example(text=t, label=y) for group in groups for y, t in group]
        preds = iter(llm_predict(llm, task, flat, adapter=adapter) if flat else [])
        out = []
        for group in groups:
            got = [next(preds) for _ in group]
            out.append(SampleVerdict([abs(p - y) <= tolerance for p, (y, _) in zip(got, group, strict=True)],
                                     "LLM labels: " + ", ".join(label_name(task, p) for p in got)))
        return out

    def eligible(groups: Sequence[Sequence[tuple[int, str]]]) -> list[SampleVerdict]:
        if not groups:
            return []
        chat = has_chat_template(llm)
        prompts = [eligible_messages(task, g) if chat else plain_prompt(eligible_messages(task, g), ELIGIBLE)
                   for g in groups]
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0, n=1, seed=0)
        answers = [c.text for c in llm.generate(prompts, params, adapter=adapter)]
        out = []
        for group, answer in zip(groups, answers, strict=True):
            answer = answer.strip() if chat else f"{ELIGIBLE} {answer.strip()}"
            read = parse_eligible(answer, len(group))
            keep = None if read.indexes is None else [i in read.indexes for i in range(len(group))]
            out.append(SampleVerdict(keep, answer, read.out_of_range))
        return out

    if mode not in ("eligible", "classify"):
        raise ValueError(f"per-sample judge mode {mode!r}: use eligible or classify")
    if mode == "classify" and task.kind != "classification":
        raise ValueError(f"judge mode classify needs a classification task, not {task.name!r}: use eligible")
    return classify if mode == "classify" else eligible


def _collect(completions: Sequence[Any], labels: Sequence[int], prefix: str) -> tuple[list[Example], int]:
    out: list[Example] = []
    malformed = 0
    for completion, label in zip(completions, labels, strict=True):
        for sample in completion.samples:
            text = parse_sample(sample.text)
            if text:
                out.append(Example(text=text, label=label, uid=f"{prefix}/{len(out)}"))
            else:
                malformed += 1
    return out, malformed


def augment(llm: LLM, task: Task, demos: Sequence[Example], cfg: GenerateConfig, *, seed: int,
            adapter: str | None = None, progress: bool | None = None) -> tuple[list[Example], dict[str, int]]:
    """FDKT augmentation: for each label with demonstrations, few-shot prompts → new labelled samples."""
    prompts: list[str] = []
    labels: list[int] = []
    for label in range(task.num_labels):
        batch = augmentation_prompts(task, demos, label, cfg.prompts_per_label, cfg.shots, seed)
        prompts += batch
        labels += [label] * len(batch)
    if not prompts:
        return [], {"prompts": 0, "generated": 0, "malformed": 0}
    completions = llm.generate(prompts, _params(cfg, seed), adapter=adapter, progress=progress)
    out, malformed = _collect(completions, labels, f"augmented/r{seed}")
    return out, {"prompts": len(prompts), "generated": len(out) + malformed, "malformed": malformed}


def augment_all_labels(llm: LLM, task: Task, demos: Sequence[Example], cfg: AugmentConfig, *, seed: int,
                       adapter: str | None = None, progress: bool | None = None
                       ) -> tuple[list[Example], dict[str, int]]:
    """FDKT augmentation as the reference: `cfg.prompts` prompts, each with `shots_per_label` demonstrations of
    every label, one reply each (up to max_tokens × samples_per_reply tokens) in which the LLM writes and
    labels `samples_per_reply` new samples, one `label: text` per line; lines that are not such a sample are
    counted as malformed and dropped."""
    from estuary.serve.types import GenerationParams

    messages = all_labels_prompts(task, demos, cfg.prompts, cfg.shots_per_label, cfg.samples_per_reply, seed)
    if not messages:
        return [], {"prompts": 0, "generated": 0, "malformed": 0}
    chat = has_chat_template(llm)
    prompts: list[Any] = messages if chat else [plain_prompt(m) for m in messages]
    params = GenerationParams(max_tokens=cfg.max_tokens * cfg.samples_per_reply, temperature=cfg.temperature,
                              top_p=cfg.top_p, n=1, seed=seed)
    out: list[Example] = []
    malformed = 0
    for completion in llm.generate(prompts, params, adapter=adapter, progress=progress):
        for sample in completion.samples:
            pairs, bad = parse_labelled_lines(task, sample.text)
            malformed += bad
            out += [Example(text=text, label=label, uid=f"augmented/r{seed}/{len(out) + i}")
                    for i, (label, text) in enumerate(pairs)]
    return out, {"prompts": len(prompts), "generated": len(out) + malformed, "malformed": malformed}


def generate_labelled(llm: LLM, task: Task, cfg: GenerateConfig, *, seed: int, adapter: str | None = None,
                      progress: bool | None = None) -> tuple[list[Example], dict[str, int]]:
    """CrossLM generation: zero-shot label-conditioned prompts → labelled samples (the label is the intent)."""
    labels = [label for label in range(task.num_labels) for _ in range(cfg.prompts_per_label)]
    prompts = [generation_prompt(task, label) for label in labels]
    completions = llm.generate(prompts, _params(cfg, seed), adapter=adapter, progress=progress)
    out, malformed = _collect(completions, labels, f"generated/r{seed}")
    return out, {"prompts": len(prompts), "generated": len(out) + malformed, "malformed": malformed}
