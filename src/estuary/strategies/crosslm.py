"""CrossLM (Deng et al. 2023, arXiv 2312.05842): client SLMs steer the server LLM's data generation.

Per round:

- prepare (server): the LLM (its latest CrossLM adapter) writes labelled task data from label-conditioned
  prompts; invalid and duplicate samples are dropped.
- phase 1 `train_score` (clients): each client fine-tunes its SLM (LoRA) on its private data, then scores
  every generated sample: the probability of the intended label, and whether its prediction agrees. With
  `calibration: prior` (default) the probabilities are first corrected for the client's own label prior
  (its mean prediction over the round's samples), so a label-skewed client still ranks minority-label samples.
- server: scores are aggregated across clients (mean probability and agreement fraction); the samples
  passing both thresholds are selected. The LLM is fine-tuned (Ray Train + DeepSpeed, LoRA) on them as
  generation records (label prompt → sample) and, as the paper trains both sides on the selected data, as
  task records (the sample's task prompt → its label word; `llm_task_records: false` leaves these out): a
  fresh adapter on every sample selected so far, or with `llm_continue` the live adapter on this round's
  selection. The
  adapter is published as the next live version, which the next round generates with. The LLM is evaluated
  on the task (through the deployment, that version) and on a general text set (perplexity).
- phase 2 `train` (clients): each client trains on private + selected data and is evaluated.

The generated samples and every client's scores are in knowledge/generated.jsonl (model-generated data and
model outputs; nothing private).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from estuary.client.context import derive_seed
from estuary.data.task import Example
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.crosslm_config import CrossLMConfig
from estuary.strategies.fdkt import example_row
from estuary.strategies.server_llm import (
    evaluate_served_llm,
    mutual_training,
    train_server_adapter,
    version_number,
)
from estuary.strategies.transfer import train_on_transfer
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.platform.run_context import ServerContext


@register
class CrossLM(Strategy):
    name = "crosslm"
    config_class: ClassVar[type] = CrossLMConfig
    server_use: ClassVar[str] = "train"
    description = "The LLM generates task data; client SLMs score it; both train on the well-scored part."
    task_kind = "classification"
    task_use = "has the LLM write labelled task data"
    task_pairs = False  # the LLM writes one text per sample

    @classmethod
    def server_training(cls, cfg: Any) -> tuple[str, dict[str, Any]] | None:
        return mutual_training(cls.name, cfg)

    def __init__(self, exp: Any, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self.version: str | None = None  # the live CrossLM adapter of the server LLM (None: base model)
        self._generated: list[Example] = []
        self._selected: list[Example] = []
        self._pool: list[list[Any]] = []  # [text, label] of every sample selected so far (the LLM's data)

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "pool": self._pool}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version = state.get("version")
        self._pool = list(state.get("pool", []))

    # ------------------------------------------------------------------ server: generate
    def prepare_round(self, rnd: int, server: ServerContext) -> dict[str, float]:
        from estuary.knowledge import filter_examples, generate_labelled

        p: CrossLMConfig = self.params
        metrics: dict[str, float] = {}
        if rnd == 1:
            metrics.update({f"llm_start/{k}": v for k, v in self._evaluate_llm(server, None).items()})
        seed = derive_seed(self.exp.seed, self.name, "generate", rnd)
        raw, stats = generate_labelled(server.llm, server.task, p.generate, seed=seed, adapter=self.version)
        cleaned = filter_examples(raw, server.task, p.filter, embed=self._embed(), seed=seed)
        self._generated = [Example(text=ex.text, label=ex.label, uid=f"crosslm/r{rnd}/{i}")
                           for i, ex in enumerate(cleaned.kept)]
        metrics.update({f"generate/{k}": float(v) for k, v in stats.items()})
        metrics.update({f"generate/filter/{k}": float(v) for k, v in cleaned.stats.items()})
        metrics["generate/adapter_version"] = float(version_number(self.version))
        return metrics

    def _embed(self) -> Any:
        if not hasattr(self, "_embedder"):
            from estuary.knowledge.embedding import TextEmbedder

            self._embedder = TextEmbedder("minilm-l6")
        return self._embedder.embed

    # ------------------------------------------------------------------ clients
    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        return [ClientTask(cid, rnd, kind="train_score", evaluate=False, params={"generated": self._generated})
                for cid in clients]

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        p: CrossLMConfig = self.params
        if task.kind == "train_score":
            result = ctx.train_steps(task.round, steps=p.local_steps)
            scores, agree, prior = _score(ctx, task.params["generated"], p.calibration)
            metrics = {"train/loss": statistics.fmean(result.losses)} if result.losses else {}
            if scores:
                metrics.update({"score/mean": statistics.fmean(scores), "score/agree": statistics.fmean(agree),
                                "score/prior_max": max(prior)})
            return ctx.egress(task, metrics=metrics, losses=result.losses, examples=result.examples_seen,
                              payload={"scores": scores, "agree": agree, "prior": prior})
        return train_on_transfer(ctx, task, p.transfer_steps)

    # ------------------------------------------------------------------ server: select, train, publish
    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        p: CrossLMConfig = self.params
        clients = sorted(outcome.results)
        rows, selected = [], []
        for i, ex in enumerate(self._generated):
            scores = [outcome.results[c].payload["scores"][i] for c in clients]
            agree = [outcome.results[c].payload["agree"][i] for c in clients]
            mean, frac = statistics.fmean(scores), statistics.fmean(agree)
            keep = mean >= p.min_score and frac >= p.consensus
            rows.append(example_row(ex, strategy=self.name, round=rnd, score=round(mean, 4), agree=round(frac, 4),
                                    selected=keep, scores=dict(zip(clients, scores, strict=True))))
            if keep:
                selected.append(ex)
        priors = [{"round": rnd, "client": c, "calibration": p.calibration,
                   "prior": outcome.results[c].payload.get("prior", [])} for c in clients]
        return {"rows": rows, "selected": selected, "priors": priors}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        p: CrossLMConfig = self.params
        server.record("generated", agg["rows"])
        server.record("score_priors", agg["priors"])
        self._selected = agg["selected"]
        metrics = {"select/generated": float(len(agg["rows"])), "select/kept": float(len(self._selected))}
        for label in range(server.task.num_labels):  # per label: a skewed selection shows here
            metrics[f"select/kept_label{label}"] = float(sum(ex.label == label for ex in self._selected))
        if p.train_llm and self._selected:
            self._pool += [[ex.text, ex.label] for ex in self._selected]
            version, train_metrics = self._train_llm(rnd, server)
            self.version = version
            metrics.update({f"llm_train/{k}": v for k, v in train_metrics.items()})
        metrics["llm/adapter_version"] = float(version_number(self.version))
        metrics.update({f"llm/{k}": v for k, v in self._evaluate_llm(server, self.version).items()})
        return metrics

    def _train_llm(self, rnd: int, server: ServerContext) -> tuple[str, dict[str, float]]:
        """Fine-tune a LoRA adapter of the served LLM (prompt → sample, loss on the sample; with
        llm_task_records also task prompt → label word), with Ray Train + DeepSpeed, and publish it as the next
        version: a fresh adapter on every sample selected so far, or with llm_continue the live version
        continued on this round's selection."""
        from estuary.knowledge.prompts import generation_prompt

        p: CrossLMConfig = self.params
        start = self.version if p.llm_continue else None
        data = [(ex.text, int(ex.label or 0)) for ex in self._selected] if start else \
            [(text, int(label)) for text, label in self._pool]
        records = [{"prompt": generation_prompt(server.task, label), "completion": f" {text}\n"}
                   for text, label in data]
        if p.llm_task_records:  # the same samples as task examples: prompt → label word
            task = server.task
            records += [{"prompt": task.prompt(ex), "completion": task.completion(ex)}
                        for ex in (Example(text=text, label=label) for text, label in data)]
        config = {"model": self.exp.server_config().model, "seed": self.exp.seed + rnd, **p.llm_train}
        return train_server_adapter(self, rnd, server, records, config,
                                    what="continued" if start else "trained", start=start)

    def _evaluate_llm(self, server: ServerContext, version: str | None) -> dict[str, float]:
        from estuary.knowledge.llm_eval import llm_perplexity

        p: CrossLMConfig = self.params
        began = time.monotonic()
        out = evaluate_served_llm(server, version, p.llm_eval_size, channel=p.llm_channel_eval)
        if p.general_size:
            out.update({f"general/{k}": v for k, v in
                        llm_perplexity(server.llm, _general_texts(p.general_task, p.general_size, self.exp.seed,
                                                                  self.exp.data.root),
                                       adapter=version).items()})
        return {**out, "eval_s": round(time.monotonic() - began, 2)} if out else out

    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        ev = self.should_evaluate(rnd)
        return [ClientTask(cid, rnd, kind="train", evaluate=ev, params={"transfer": self._selected})
                for cid in sorted(outcome.results)]


def calibrate(probs: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A client's label probabilities on the round's samples, corrected for its own label prior:
    p'(y|x) ∝ p(y|x) · q(y) / π(y), with π its mean prediction over the samples and q their intended label mix
    (label-shift correction). Returns (p', π)."""
    probs = np.asarray(probs, dtype=np.float64)
    prior = probs.mean(axis=0)
    target = np.bincount(np.asarray(labels, dtype=int), minlength=probs.shape[1]) / max(1, len(labels))
    adjusted = probs * (target / np.clip(prior, 1e-12, None))
    return adjusted / np.clip(adjusted.sum(axis=1, keepdims=True), 1e-300, None), prior


def _score(ctx: ClientContext, generated: list[Example],
           calibration: str = "prior") -> tuple[list[float], list[int], list[float]]:
    """Each sample's probability of its intended label under the client's SLM (prior-corrected unless
    `calibration` is none), argmax agreement, and the client's mean prediction over the samples."""
    if not generated:
        return [], [], []
    from estuary.lm.scoring import predict_label_probs

    probs = predict_label_probs(ctx.model, ctx.tokenizer, ctx.task, generated,
                                batch_size=ctx.exp.evaluation.batch_size, max_length=ctx.exp.training.max_length)
    labels = [int(ex.label or 0) for ex in generated]
    raw = probs.numpy().astype(np.float64)
    adjusted, prior = calibrate(raw, labels)
    if calibration == "none":
        adjusted = raw
    scores = [round(float(adjusted[i, y]), 6) for i, y in enumerate(labels)]
    agree = [int(int(adjusted[i].argmax()) == y) for i, y in enumerate(labels)]
    return scores, agree, [round(float(v), 6) for v in prior]


def _general_texts(task_name: str, size: int, seed: int, root: Any) -> list[str]:
    """Held-out general texts: a task's test split (its targets where it has them, e.g. E2E references)."""
    from pathlib import Path

    from estuary.data.datasets import load_splits

    test = load_splits(task_name, root=Path(root) if root else None, seed=seed).test
    return [(ex.target or ex.text) for ex in test[:size]]

