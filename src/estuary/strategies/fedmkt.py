"""FedMKT (Fan et al., COLING 2025, arXiv 2406.02224): mutual knowledge transfer between the server LLM and
client SLMs with different tokenizers, over a public data set, every model carrying LoRA adapters.

Public data: a label-stratified sample of the task's official validation split (no client partition draws
from it), each example as its full text, prompt + label word. Per round:

- phase 1 `train_topk` (clients): each client fine-tunes its SLM adapter on its private data, then sends
  its top-k next-token distributions on the public texts in its own tokenisation (token ids, token strings,
  per-token log-probabilities; a `TopKLogprobs` payload). The payload is checked on arrival: a client whose
  knowledge is malformed (NaN/inf, empty rows, wrong lengths, ids outside its vocabulary) is named in the
  log, counted (`server/knowledge/rejected`) and left out; the round goes on.
- server: the LLM's top-k on the same texts comes from the deployment (its live adapter version). Each
  client's knowledge is aligned to the LLM (token boundaries matched by character edit distance, MinED
  vocabulary mapping cached per tokenizer pair). Per sample the LLM's target is the best teacher (reward
  exp(-CE), "greater"; the CE each model has on the text's ground truth in its own tokenisation,
  `selection_metric: own`, the label word with `lm_loss: completion`) among itself and the aligned clients;
  its adapter, continued from its last version, is distilled on them ((1-λ)·LM + λ·KD, Ray Train +
  DeepSpeed, `public_epochs` passes over the public set) and published. Then, as the reference code does at
  the end of its epoch, the LLM's top-k is recomputed with the version just published (`slm_targets:
  after_update`; `previous_round` keeps the distributions the update started from), aligned to each client,
  and each client's target is the better of itself and the aligned LLM. The recomputed top-k is also the
  LLM's own candidate in the next round (cached while the version is live).
- phase 2 `distill` (clients): each client trains on the public texts towards its targets (`public_epochs`
  passes), then is evaluated.

Both sides use k = min(top_k, server.max_logprobs).

Round metrics report the alignment per tokenizer pair (`server/align/<client model>/...`: vocabulary exact
share both ways, sequence coverage both ways) and the selections. knowledge/fedmkt.jsonl records what
crossed the wire, compactly: per client per round the texts, positions and k it sent, whether it was
accepted (and why not), the coverage and the selection counts; plus one row for the LLM.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from estuary.data.task import Example
from estuary.lm.seeding import epoch_steps
from estuary.platform.strategy import Strategy
from estuary.registry import register
from estuary.strategies.fedmkt_config import FedMKTConfig
from estuary.strategies.fedmkt_knowledge import (
    LLM,
    Exchange,
    KnowledgeRejected,
    TokenizerBank,
    check_client_knowledge,
    client_side,
    llm_side,
)
from estuary.strategies.server_llm import (
    evaluate_served_llm,
    mutual_training,
    train_server_adapter,
    version_number,
)
from estuary.wire import ClientTask, Egress, RoundOutcome

if TYPE_CHECKING:
    from estuary.client.context import ClientContext
    from estuary.platform.run_context import ServerContext
    from estuary.serve.types import TopKLogprobs


def model_label(spec: str) -> str:
    """A metric-safe short name of a model spec (an alias, or a folder's name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec.rstrip("/")).name or spec)


@register
class FedMKT(Strategy):
    name = "fedmkt"
    config_class: ClassVar[type] = FedMKTConfig
    server_use: ClassVar[str] = "train"
    description = "Mutual top-k distillation LLM ↔ SLMs on public data, aligned across tokenizers."

    @classmethod
    def server_training(cls, cfg: Any) -> tuple[str, dict[str, Any]] | None:
        return mutual_training(cls.name, cfg)

    def __init__(self, exp: Any, params: Any | None = None) -> None:
        super().__init__(exp, params)
        self.version: str | None = None  # the live FedMKT adapter of the server LLM (None: base model)
        self._public: list[Example] | None = None
        self._targets: dict[str, list[Any]] = {}  # this round's phase-2 targets per client
        self._llm_topk: tuple[str | None, TopKLogprobs] | None = None  # (adapter version, the LLM's top-k)
        self.vocab = TokenizerBank()  # the models' token texts, tokenizers and MinED mappings (loaded once)

    def top_k(self) -> int:
        """The k every model sends: top_k, clamped to what the LLM's deployment returns (server.max_logprobs)."""
        return min(self.params.top_k, self.exp.server_config().max_logprobs)

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.version = state.get("version")

    def public(self) -> list[Example]:
        """The public data set: `public_size` examples of the task's validation split, label-stratified."""
        if self._public is None:
            from estuary.data import load_splits, stratified_sample

            d = self.exp.data
            evals = load_splits(d.task, root=Path(d.root) if d.root else None, seed=self.exp.seed).eval
            self._public = stratified_sample(evals, self.params.public_size, seed=self.exp.seed,
                                             purpose="fedmkt/public")
        return self._public

    def _client_spec(self, cid: str) -> str:
        return self.exp.models.for_client(self.client_ids().index(cid))

    # ------------------------------------------------------------------ clients
    def configure_round(self, rnd: int, clients: list[str]) -> list[ClientTask]:
        return [ClientTask(cid, rnd, kind="train_topk", evaluate=False, params={"public": self.public()})
                for cid in clients]

    def client_step(self, ctx: ClientContext, task: ClientTask) -> Egress:
        from estuary.client.knowledge_transfer import client_distill, client_topk

        p: FedMKTConfig = self.params
        public: list[Example] = task.params["public"]
        if task.kind == "train_topk":
            result = ctx.train_steps(task.round, steps=p.local_steps)
            payload = client_topk(ctx, public, self.top_k())
            metrics = {"train/loss": statistics.fmean(result.losses)} if result.losses else {}
            metrics["knowledge/texts"] = float(len(payload["texts"]))
            metrics["knowledge/positions"] = float(sum(len(t["token_ids"]) for t in payload["texts"]))
            return ctx.egress(task, metrics=metrics, losses=result.losses, examples=result.examples_seen,
                              payload={"topk": payload})
        targets = task.params.get("targets")
        batch = self.exp.training.batch_size
        steps = epoch_steps(len(public), batch, p.public_epochs) if p.distill_steps is None else p.distill_steps
        res = client_distill(ctx, task.round, public, targets, steps=steps, distill_weight=p.distill_weight,
                             temperature=p.temperature, tail_bucket=p.tail_bucket,
                             lm_loss=p.lm_loss) if targets else None
        metrics = {"distill/trained": float(res is not None)}
        if res is not None and res.losses:
            metrics.update({"distill/loss": statistics.fmean(res.losses), "distill/lm": statistics.fmean(res.lm_losses),
                            "distill/kd": statistics.fmean(res.kd_losses)})
        if task.evaluate:
            metrics.update(ctx.evaluate(task))
        return ctx.egress(task, metrics=metrics, losses=res.losses if res else [],
                          examples=res.examples_seen if res else 0)

    # ------------------------------------------------------------------ server: check, align, select, train
    def aggregate(self, rnd: int, outcome: RoundOutcome) -> dict[str, Any]:
        """Every client's payload checked on arrival: accepted (parsed) or rejected (the reason, client named)."""
        accepted: dict[str, tuple[str, TopKLogprobs]] = {}
        rejected: dict[str, str] = {}
        for cid in sorted(outcome.results):
            spec = self._client_spec(cid)
            try:
                accepted[cid] = (spec, check_client_knowledge(
                    cid, outcome.results[cid].payload.get("topk"), texts=len(self.public()),
                    vocab_size=len(self.vocab.texts(spec))))
            except KnowledgeRejected as exc:
                rejected[cid] = str(exc)
        return {"accepted": accepted, "rejected": rejected}

    def server_step(self, rnd: int, agg: dict[str, Any], server: ServerContext) -> dict[str, float]:
        p: FedMKTConfig = self.params
        accepted: dict[str, tuple[str, TopKLogprobs]] = agg["accepted"]
        rejected: dict[str, str] = agg["rejected"]
        for reason in rejected.values():
            server.log(f"[yellow]fedmkt round {rnd}: {reason}[/yellow]")
        metrics: dict[str, float] = {"knowledge/accepted": float(len(accepted)),
                                     "knowledge/rejected": float(len(rejected))}
        if rnd == 1 and p.llm_eval_size:
            metrics.update({f"llm_start/{k}": v for k, v in self._evaluate_llm(server, None).items()})
        if self.top_k() < p.top_k and self._llm_topk is None:
            server.log(f"[yellow]fedmkt: top_k {p.top_k} clamped to server.max_logprobs {self.top_k()} (set "
                       f"server.max_logprobs: {p.top_k} for the published k)[/yellow]")
        metrics["knowledge/k"] = float(self.top_k())
        texts = [server.task.prompt(ex) + server.task.completion(ex) for ex in self.public()]
        llm_spec = self.exp.server_config().model
        args = (self.vocab, p.selection, p.selection_metric,
                self._completion_ids(server, {llm_spec, *(spec for spec, _ in accepted.values())}))
        t0 = time.perf_counter()
        llm_topk = self._llm_knowledge(server, texts)
        topk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ex = llm_side(llm_spec, llm_topk, accepted, *args)
        align_s = time.perf_counter() - t0
        if p.train_llm and accepted:
            self.version, train_metrics = self._train_llm(rnd, server, ex.records)
            metrics.update({f"llm_train/{k}": v for k, v in train_metrics.items()})
        elif p.train_llm:
            server.log(f"[yellow]fedmkt round {rnd}: no client knowledge accepted; the LLM is not trained[/yellow]")
        t0 = time.perf_counter()
        slm_topk = self._llm_knowledge(server, texts) if p.slm_targets == "after_update" else llm_topk
        metrics["knowledge/llm_topk_seconds"] = topk_s + time.perf_counter() - t0  # the served LLM's top-k calls
        t0 = time.perf_counter()
        client_side(llm_spec, slm_topk, accepted, *args, into=ex)
        metrics["align/seconds"] = align_s + time.perf_counter() - t0
        metrics.update(_exchange_metrics(ex, len(texts)))
        self._targets = {cid: c.targets for cid, c in ex.clients.items()}
        server.record("fedmkt", _knowledge_rows(rnd, ex, accepted, rejected, llm_topk, self._client_spec,
                                                slm_topk.adapter))
        metrics["llm/adapter_version"] = float(version_number(self.version))
        metrics["llm/slm_targets_version"] = float(version_number(slm_topk.adapter))
        if self.should_evaluate(rnd):  # the LLM is evaluated when the clients are (evaluation.every)
            metrics.update({f"llm/{k}": v for k, v in self._evaluate_llm(server, self.version).items()})
        return metrics

    def _llm_knowledge(self, server: ServerContext, texts: list[str]) -> TopKLogprobs:
        """The LLM's top-k on the public texts with its live adapter version (kept while that version is live:
        the top-k the SLMs distilled from after an update is the LLM's own candidate in the next round)."""
        if self._llm_topk is None or self._llm_topk[0] != self.version:
            self._llm_topk = (self.version, server.llm.topk_logprobs(texts, k=self.top_k(), adapter=self.version))
        return self._llm_topk[1]

    def _completion_ids(self, server: ServerContext, specs: set[str]) -> dict[str, list[list[int]]] | None:
        """Each model's tokens of each public completion, when the completion is the ground truth."""
        if self.params.lm_loss != "completion":
            return None
        words = [server.task.completion(ex) for ex in self.public()]
        return {spec: [self.vocab.tokenizer(spec)(w, add_special_tokens=False)["input_ids"] for w in words]
                for spec in specs}

    def _train_llm(self, rnd: int, server: ServerContext,
                   records: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
        """Distil the served LLM's adapter (from its last version, with llm_continue) on this round's records
        (Ray Train + DeepSpeed) and publish it as the next version."""
        from estuary.train import TrainConfig

        p: FedMKTConfig = self.params
        config = {"model": self.exp.server_config().model, "seed": self.exp.seed + rnd, **p.llm_train}
        if "steps" not in p.llm_train:  # public_epochs passes over the public set at the global batch
            config["steps"] = epoch_steps(len(records), TrainConfig.load(config, "method_params.llm_train")
                                          .global_batch_size, p.public_epochs)
        config["objective"] = {"distill_weight": p.distill_weight, "temperature": p.temperature,
                               "tail_bucket": p.tail_bucket, **p.llm_train.get("objective", {})}
        return train_server_adapter(self, rnd, server, records, config, what="distilled",
                                    start=self.version if p.llm_continue else None)

    def _evaluate_llm(self, server: ServerContext, version: str | None) -> dict[str, float]:
        return evaluate_served_llm(server, version, self.params.llm_eval_size)

    def configure_followup(self, rnd: int, outcome: RoundOutcome) -> list[ClientTask]:
        ev = self.should_evaluate(rnd)
        return [ClientTask(cid, rnd, kind="distill", evaluate=ev,
                           params={"public": self.public(), "targets": self._targets.get(cid)})
                for cid in sorted(outcome.results)]


def _exchange_metrics(ex: Exchange, samples: int) -> dict[str, float]:
    """Alignment per tokenizer pair (client model ↔ LLM) and the selections."""
    out: dict[str, float] = {}
    by_model: dict[str, list[Any]] = defaultdict(list)
    for c in ex.clients.values():
        by_model[model_label(c.spec)].append(c)
    for label, cs in sorted(by_model.items()):
        out[f"align/{label}/vocab_exact"] = cs[0].vocab_exact_to_llm
        out[f"align/{label}/vocab_exact_from_llm"] = cs[0].vocab_exact_from_llm
        out[f"align/{label}/seq_coverage"] = statistics.fmean(v for c in cs for v in c.coverage_to_llm)
        out[f"align/{label}/seq_coverage_from_llm"] = statistics.fmean(v for c in cs for v in c.coverage_from_llm)
    out["select/llm_self"] = float(ex.llm_choices.get(LLM, 0))
    out["select/llm_from_clients"] = float(samples - ex.llm_choices.get(LLM, 0)) if ex.clients else 0.0
    if ex.clients:
        out["select/clients_took_llm"] = float(sum(c.took_llm for c in ex.clients.values()))  # client-samples
        out["select/clients_took_llm_share"] = statistics.fmean(c.took_llm / samples for c in ex.clients.values())
    return out


def _knowledge_rows(rnd: int, ex: Exchange, accepted: dict[str, Any], rejected: dict[str, str],
                    llm_topk: TopKLogprobs, spec_of: Any, targets_adapter: str | None) -> list[dict[str, Any]]:
    """What crossed the wire this round, one row per client and one for the LLM (counts, not logprobs): the
    LLM's row names the adapter its own candidate came from and the one the clients' targets came from."""
    base = {"strategy": "fedmkt", "round": rnd}
    rows = []
    for cid in sorted({*accepted, *rejected}):
        if cid in rejected:
            rows.append({**base, "client": cid, "model": spec_of(cid), "accepted": False, "reason": rejected[cid]})
            continue
        payload, c = accepted[cid][1], ex.clients[cid]
        rows.append({**base, "client": cid, "model": c.spec, "accepted": True, "texts": len(payload.texts),
                     "positions": c.positions, "k": payload.k,
                     "vocab_exact_to_llm": round(c.vocab_exact_to_llm, 4),
                     "vocab_exact_from_llm": round(c.vocab_exact_from_llm, 4),
                     "seq_coverage_to_llm": round(statistics.fmean(c.coverage_to_llm), 4),
                     "seq_coverage_from_llm": round(statistics.fmean(c.coverage_from_llm), 4),
                     "took_llm": c.took_llm, "chosen_by_llm": c.chosen_by_llm})
    rows.append({**base, "client": "server", "model": llm_topk.model, "adapter": llm_topk.adapter,
                 "targets_adapter": targets_adapter, "texts": len(llm_topk.texts),
                 "positions": sum(len(t.token_ids) for t in llm_topk.texts), "k": llm_topk.k,
                 "records": len(ex.records), "chose": dict(ex.llm_choices)})
    return rows
